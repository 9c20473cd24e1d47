"""How much of what the adapter learnt the Mac bundle keeps: the held-out loss, measured with mlx-lm.

    python -m lora_style.mlx.fidelity losses --examples results/R/data/eval.jsonl --limit 64 \
        --template qwen --cutoff-len 2048 --base-4bit models/B-4bit-mlx \
        --adapter-path lora_adapters/R_mlx [--unquantised ./models/B] --output losses.json
    python -m lora_style.mlx.fidelity verdict --losses losses.json --reference reference_eval.json \
        --threshold-percent 10

The loss is the one LLaMA-Factory minimised and evaluates (training/eval.sh on the pod): each
example rendered as training rendered it (prompt_format.py: the template's slots each tokenised
on their own, as LLaMA-Factory's template encodes them), truncated to cutoff_len as its
``infer_seqlen`` truncates, the prompt's tokens masked (``train_on_prompt: false``), the mean
cross-entropy over the response's tokens (the template's end-of-turn included), then the mean
over examples (the pod evaluates one example a batch, so its eval_loss is that same mean).

Three models are measured here: the bundle (the 4-bit MLX base + the converted adapter), the
4-bit base alone (what the adapter has to improve on), and, for a local base small enough, the
unquantised base + the adapter, which for an unquantised training must equal the pod's number: the
proof that both sides measure the same quantity. The verdict compares them: the share of what the
adapter learnt (base loss - reference loss) that the bundle keeps (base loss - bundle loss).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lora_style.fileio import UserError, read_json_object, write_atomic
from lora_style.prompt_format import load_template, user_content


class FidelityError(UserError):
    """A usage or input problem; the message says what to change."""


def _fill(slot: str, content: str) -> str:
    return slot.replace("{{content}}", content)


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's truncation of one prompt/response pair to cutoff_len (0.9.5,
    data/processor/processor_utils.py), the same numbers."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def example_ids(tokenizer, example: dict, template: dict, cutoff_len: int) -> tuple[list[int], int]:
    """(token ids, how many of them are the prompt) of one example as LLaMA-Factory's supervised
    processor builds it: each filled slot encoded on its own without special tokens."""
    if template.get("efficient_eos"):
        raise FidelityError(f"template {template.get('name')}: efficient_eos is not handled here")

    def encode(slots: list[str], content: str) -> list[int]:
        ids: list[int] = []
        for slot in slots:
            text = _fill(slot, content)
            if text:
                ids += list(tokenizer.encode(text, add_special_tokens=False))
        return ids

    source = encode(template["format_prefix"], "")
    if template.get("default_system"):
        source += encode(template["format_system"], template["default_system"])
    source += encode(template["format_user"], user_content(example["instruction"], example["input"]))
    target = encode(template["format_assistant"], example["output"])
    source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len)
    return source[:source_len] + target[:target_len], source_len


def read_examples(path: str | Path, limit: int) -> list[dict]:
    """The first `limit` examples of a normalised JSONL file (data/validate.py wrote it)."""
    examples = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            examples.append(json.loads(line))
        if len(examples) >= limit:
            break
    return examples


def mean_loss(model, encoded: list[tuple[list[int], int]]) -> float:
    """The mean over examples of each one's mean cross-entropy over its response tokens."""
    import mlx.core as mx
    import mlx.nn as nn

    losses = []
    for ids, prompt_len in encoded:
        if len(ids) - prompt_len < 1:
            continue  # cut to nothing by cutoff_len: LLaMA-Factory has no label to score either
        tokens = mx.array(ids)[None]
        logits = model(tokens[:, :-1]).astype(mx.float32)
        per_token = nn.losses.cross_entropy(logits[0, prompt_len - 1 :], tokens[0, prompt_len:])
        losses.append(per_token.mean().item())
    if not losses:
        raise FidelityError("no example has a response token left after cutoff_len; nothing to measure")
    return sum(losses) / len(losses)


def _load(model_path: str, adapter_path: str | None = None):
    if not (Path(model_path) / "config.json").is_file():
        # mlx_lm.load would take a missing path for a hub id and download it.
        raise FidelityError(f"{model_path}: no local model there (config.json); build it first")
    import mlx_lm

    return mlx_lm.load(model_path, adapter_path=adapter_path)


def folder_gb(path: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")) / 1e9


def measure(
    examples: list[dict],
    template: dict,
    cutoff_len: int,
    base_4bit: str,
    adapter_path: str,
    unquantised: str | None = None,
    log=print,
) -> dict:
    """The losses of the 4-bit base, the bundle, and (given) the unquantised base + adapter."""
    from mlx_lm.tuner.utils import load_adapters

    record: dict = {"examples": len(examples), "cutoff_len": cutoff_len, "template": template["name"]}
    started = time.monotonic()
    model, tokenizer = _load(base_4bit)
    encoded = [example_ids(tokenizer, example, template, cutoff_len) for example in examples]
    record["response_tokens"] = sum(len(ids) - n for ids, n in encoded)
    record["base_4bit_loss"] = mean_loss(model, encoded)
    log(f"{base_4bit} alone: loss {record['base_4bit_loss']:.4f}")
    load_adapters(model, adapter_path)  # the same base in memory, the adapter applied on it
    record["bundle_loss"] = mean_loss(model, encoded)
    log(f"{base_4bit} + {adapter_path}: loss {record['bundle_loss']:.4f}")
    del model
    if unquantised:
        model, _ = _load(unquantised, adapter_path)
        record["unquantised_adapter_loss"] = mean_loss(model, encoded)
        log(f"{unquantised} (unquantised) + adapter: loss {record['unquantised_adapter_loss']:.4f}")
        del model
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def verdict(losses: dict, reference: dict | None, threshold_percent: float, run: str = "RUN") -> dict:
    """The numbers and the plain sentence for metadata.json and the report."""
    pod = (reference or {}).get("eval_loss")
    unquantised = losses.get("unquantised_adapter_loss")
    base, bundle = losses["base_4bit_loss"], losses["bundle_loss"]
    target, against = (
        (pod, "the pod's evaluation of the trained adapter")
        if pod is not None
        else (unquantised, "the unquantised base + adapter here")
    )
    out = {
        "pod_loss": pod,
        "bundle_loss": round(bundle, 6),
        "base_4bit_loss": round(base, 6),
        "unquantised_adapter_loss": None if unquantised is None else round(unquantised, 6),
        "examples": losses.get("examples"),
        "threshold_percent": threshold_percent,
        "reference": against if target is not None else None,
    }
    if target is None:
        out.update(
            kept_percent=None,
            gap_percent=None,
            ok=None,
            sentence=(
                "No reference loss: the pod's evaluation was skipped and the base is too large to "
                f"load unquantised here. The bundle's held-out loss is {bundle:.4f}, the 4-bit "
                f"base's {base:.4f}."
            ),
        )
        return out
    learnt = base - target
    if learnt <= 0:
        out.update(
            kept_percent=None,
            gap_percent=None,
            ok=False,
            sentence=(
                f"The adapter learnt nothing measurable on the held-out examples (reference loss "
                f"{target:.4f}, the 4-bit base's {base:.4f}): train longer or on more data."
            ),
        )
        return out
    kept = 100 * (base - bundle) / learnt
    gap = 100 - kept
    out.update(kept_percent=round(kept, 1), gap_percent=round(gap, 1), ok=gap <= threshold_percent)
    sentence = (
        f"The Mac bundle keeps {kept:.0f}% of what the adapter learnt (held-out loss: base "
        f"{base:.4f}, bundle {bundle:.4f}, {against} {target:.4f})."
    )
    if not out["ok"]:
        sentence += (
            f" That loses more than {threshold_percent:g}%: try a finer MLX quantisation of the "
            f"base: snakemake {run}_quant_table measures --q-group-size 32, 6 and 8 bits and "
            "--quant-predicate mixed_4_6 (size on disk, loss, tokens/s), and the adapter runs "
            "unchanged on the one you pick (--model models/<base>-<candidate>-mlx)."
        )
    out["sentence"] = sentence
    return out


def _json(path: str) -> dict:
    return read_json_object(path, FidelityError, "run snakemake again to rebuild it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("losses", help="measure the held-out losses with mlx-lm")
    p.add_argument("--examples", required=True, help="the held-out examples (results/R/data/eval.jsonl)")
    p.add_argument("--limit", type=int, default=64, help="the first N of them (fidelity.examples)")
    p.add_argument("--template", default="qwen")
    p.add_argument("--cutoff-len", type=int, required=True)
    p.add_argument("--base-4bit", required=True, help="the bundle's 4-bit MLX base")
    p.add_argument("--adapter-path", required=True, help="the bundle's adapter folder")
    p.add_argument(
        "--unquantised", help="the base model unquantised (a local folder), to check the pod's number"
    )
    p.add_argument("--output", required=True)
    v = sub.add_parser("verdict", help="the verdict of measured losses (what metadata.json records)")
    v.add_argument("--losses", required=True)
    v.add_argument("--reference", help="the pod's reference_eval.json")
    v.add_argument("--threshold-percent", type=float, default=10.0)
    v.add_argument("--run", default="RUN")
    args = parser.parse_args(argv)
    try:
        if args.command == "verdict":
            reference = _json(args.reference) if args.reference else None
            print(
                json.dumps(verdict(_json(args.losses), reference, args.threshold_percent, args.run), indent=2)
            )
            return 0
        examples = read_examples(args.examples, args.limit)
        if not examples:
            record = {"examples": 0, "skipped": f"{args.examples} holds no examples (val_size 0)"}
        else:
            record = measure(
                examples,
                load_template(args.template),
                args.cutoff_len,
                args.base_4bit,
                args.adapter_path,
                args.unquantised,
                log=lambda text: print(text, file=sys.stderr),
            )
    except FidelityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_atomic(args.output, (json.dumps(record, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
