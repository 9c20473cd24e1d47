"""The cheaper fixes for a bundle that keeps too little, measured: finer MLX quantisations of the base.

    python -m lora_style.mlx.quant_table --examples results/R/data/eval.jsonl --limit 64 \
        --template qwen --cutoff-len 2048 --adapter-path lora_adapters/R_mlx \
        --losses results/R/fidelity/losses.json --reference results/R/train/reference_eval.json \
        --model 4bit=models/B-4bit-mlx --model g32=models/B-g32-mlx ... \
        --output results/R/quant_table.md

For each MLX base (the bundle's 4-bit one and the candidates the run's `fidelity.quant_candidates`
names, built by rule quant_candidate with mlx_lm.convert), the same adapter on it: its size on
disk, its held-out loss (mlx/fidelity.py: the same examples, the same loss as the pod's), the
share of what the adapter learnt that it keeps, and its generation speed on this machine
(tokens/s of mlx_lm.stream_generate, greedy, on the first held-out prompt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lora_style.fileio import read_json_object, write_atomic
from lora_style.mlx import fidelity
from lora_style.prompt_format import load_template, render_prompt

SPEED_TOKENS = 64


def tokens_per_second(model, tokenizer, prompt_ids: list[int], tokens: int = SPEED_TOKENS) -> float:
    """mlx-lm's own generation speed (its last response's generation_tps), greedy."""
    import mlx_lm

    speed = 0.0
    for response in mlx_lm.stream_generate(model, tokenizer, prompt_ids, max_tokens=tokens):
        speed = float(response.generation_tps)
    return speed


def measure_model(
    name: str, path: str, adapter_path: str | None, examples, template, cutoff_len: int
) -> dict:
    import mlx_lm

    started = time.monotonic()
    model, tokenizer = mlx_lm.load(path, adapter_path=adapter_path)
    encoded = [fidelity.example_ids(tokenizer, example, template, cutoff_len) for example in examples]
    loss = fidelity.mean_loss(model, encoded)
    first = examples[0]
    prompt = render_prompt(first["instruction"], first["input"], template)
    speed = tokens_per_second(model, tokenizer, list(tokenizer.encode(prompt, add_special_tokens=False)))
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization") or {}
    return {
        "name": name,
        "path": path,
        "adapter": adapter_path is not None,
        "bits": quant.get("bits"),
        "group_size": quant.get("group_size"),
        "mixed": any(isinstance(v, dict) for v in quant.values()),
        "bytes": sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")),
        "loss": loss,
        "tokens_per_s": round(speed, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


def table(rows: list[dict], base_loss: float, reference: float | None, run: str) -> str:
    lines = [
        f"# {run}: the adapter on finer MLX quantisations of the base",
        "",
        "Held-out loss of the same adapter on each base (mean over response tokens, the pod's "
        "measure); kept = the share of what the adapter learnt (4-bit base alone "
        f"{base_loss:.4f}" + (f" -> pod {reference:.4f}" if reference is not None else "") + ") it keeps.",
        "",
        "| base | size on disk | loss | kept | tokens/s here |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        kept = (
            f"{100 * (base_loss - row['loss']) / (base_loss - reference):.0f}%"
            if reference is not None and base_loss > reference
            else "-"
        )
        lines.append(
            f"| {row['name']} (`{row['path']}`) | {row['bytes'] / 1e6:,.1f} MB | {row['loss']:.4f} "
            f"| {kept} | {row['tokens_per_s']:.0f} |"
        )
    if any(not row.get("adapter", True) for row in rows):
        lines += [
            "",
            "A fused model (`mlx_lm.fuse`: the adapter folded into the 4-bit weights, which are "
            "quantised again) is one folder for apps that load a single MLX model; it carries "
            "the training format as its chat_template.jinja.",
        ]
    lines += [
        "",
        "The adapter runs unchanged on any of them: `mlx_lm.generate --model <base> --adapter-path "
        f"lora_adapters/{run}_mlx` (docs/mac-bundle.md).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--examples", required=True)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--template", default="qwen")
    parser.add_argument("--cutoff-len", type=int, required=True)
    parser.add_argument("--adapter-path", required=True)
    parser.add_argument("--losses", required=True, help="the bundle's losses.json (the 4-bit base alone)")
    parser.add_argument("--reference", help="the pod's reference_eval.json")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument(
        "--fused",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a model with the adapter fused in (mlx_lm.fuse), measured without --adapter-path",
    )
    parser.add_argument(
        "--output", required=True, help="the table (Markdown); its numbers beside it as .json"
    )
    args = parser.parse_args(argv)
    try:
        losses = read_json_object(args.losses, fidelity.FidelityError)
        reference = read_json_object(args.reference, fidelity.FidelityError) if args.reference else {}
        examples = fidelity.read_examples(args.examples, args.limit)
        if not examples:
            raise fidelity.FidelityError(f"{args.examples}: no held-out examples (val_size 0)")
        template = load_template(args.template)
        rows = []
        for spec, adapter in [(m, args.adapter_path) for m in args.model] + [(f, None) for f in args.fused]:
            name, _, path = spec.partition("=")
            row = measure_model(name, path, adapter, examples, template, args.cutoff_len)
            print(
                f"{name}: {row['bytes'] / 1e6:.1f} MB, loss {row['loss']:.4f}, "
                f"{row['tokens_per_s']:.0f} tokens/s",
                file=sys.stderr,
            )
            rows.append(row)
    except fidelity.FidelityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    base_loss = losses["base_4bit_loss"]
    text = table(
        rows, base_loss, reference.get("eval_loss", losses.get("unquantised_adapter_loss")), args.run
    )
    write_atomic(args.output, text.encode())
    record = {"base_4bit_loss": base_loss, "reference": reference.get("eval_loss"), "rows": rows}
    write_atomic(Path(args.output).with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
