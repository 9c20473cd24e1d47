"""Write the MLX bundle's metadata.json: the guide's fields plus where the adapter came from.

    python -m lora_style.mlx.metadata --run lovecraft --author "H.P. Lovecraft" \
        --base-model models/Qwen2.5-32B-4bit-mlx --base-model-id Qwen/Qwen2.5-32B \
        --lora-rank 64 --lora-alpha 256 --template qwen \
        --validation results/lovecraft/data/validation.json --peft lora_adapters/lovecraft_peft \
        --output lora_adapters/lovecraft_mlx/metadata.json

The guide (step 7) has the user edit this file by hand; here every field is derived:
``author`` from the run's config, ``base_model`` is the local 4-bit MLX model,
``lora_rank``/``lora_alpha`` are the run's training arguments (checked against the adapter's
own adapter_config.json, so a stale adapter cannot be labelled with new numbers), and
``training_examples`` is counted in the validated data. The rest is provenance: the chosen
checkpoint and its eval_loss (training_summary.json), the data's sha256, the base model's id,
and the prompt format training used (template, system prompt, an example rendering).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_style.fileio import UserError, read_json_object, write_atomic
from lora_style.mlx import fidelity
from lora_style.prompt_format import load_template, render_prompt


class MetadataError(UserError):
    """An input is missing or contradicts another; the message says which and what to do."""


def _read_json(path: Path, what: str) -> dict:
    return read_json_object(path, MetadataError, what)


def prompt_format(template_name: str) -> dict:
    template = load_template(template_name)
    example = {"instruction": "{instruction}", "input": "{input}"}
    return {
        "template": template_name,
        "llamafactory_version": template.get("llamafactory_version"),
        "system": template["default_system"],
        "user_turn": 'instruction + "\\n" + input (the newline is left out when input is empty)',
        "stop_words": template.get("stop_words", []),
        "example": {**example, "rendered": render_prompt(example["instruction"], example["input"], template)},
    }


def build_metadata(
    run: str,
    author: str,
    base_model: str,
    base_model_id: str,
    lora_rank: int,
    lora_alpha: float,
    template: str,
    validation: Path,
    peft: Path,
) -> dict:
    report = _read_json(validation, "the validation report of the run's data")
    summary = _read_json(peft / "training_summary.json", "written by the training stage")
    adapter = _read_json(peft / "adapter_config.json", "the PEFT adapter's config")
    trained = (adapter.get("r"), adapter.get("lora_alpha"))
    if trained[0] != lora_rank or float(trained[1]) != float(lora_alpha):
        raise MetadataError(
            f"{peft / 'adapter_config.json'}: the adapter was trained with r={trained[0]}, "
            f"lora_alpha={trained[1]}, but the run's config says lora_rank={lora_rank}, "
            f"lora_alpha={lora_alpha:g}; the adapter is stale: retrain the run"
        )
    if summary.get("run") not in (None, run):
        raise MetadataError(
            f"{peft / 'training_summary.json'}: belongs to run '{summary['run']}', not '{run}'"
        )
    return {
        # The guide's fields.
        "author": author,
        "base_model": base_model,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "training_examples": report.get("train_examples", report["examples"]),
        # Provenance.
        "run": run,
        "base_model_id": base_model_id,
        "use_rslora": bool(adapter.get("use_rslora")),
        "use_dora": bool(adapter.get("use_dora")),
        "checkpoint": {
            "step": summary.get("best_step"),
            "eval_loss": summary.get("best_eval_loss"),
            "selected_by": summary.get("selected_by"),
            "total_steps": summary.get("total_steps"),
            "run_id": summary.get("run_id"),
            "wall_time_s": summary.get("wall_time_s"),
            "llamafactory_version": summary.get("llamafactory_version"),
            "cut_by_budget": bool(summary.get("cut_by_budget")),
        },
        # What the training cost (all attempts), beside what the plan estimated.
        "gpu_time": summary.get("gpu_time"),
        "estimate": summary.get("estimate"),
        # What RunPod billed for the rented pod (GPU, disk, total), when it was read.
        "runpod_bill": summary.get("runpod_bill"),
        "data": {
            "examples": report["examples"],
            "held_out": report.get("eval_examples", 0),
            "sha256": report["sha256"],
        },
        "prompt_format": prompt_format(template),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--author", default="")
    parser.add_argument("--base-model", required=True, help="the local 4-bit MLX model directory")
    parser.add_argument("--base-model-id", required=True, help="the run's base_model (hub id or path)")
    parser.add_argument("--lora-rank", type=int, required=True)
    parser.add_argument("--lora-alpha", type=float, required=True)
    parser.add_argument("--template", required=True, help="the training template's name")
    parser.add_argument("--validation", required=True, help="results/{run}/data/validation.json")
    parser.add_argument("--peft", required=True, help="lora_adapters/{run}_peft")
    parser.add_argument("--fidelity-losses", help="results/{run}/fidelity/losses.json (mlx/fidelity.py)")
    parser.add_argument("--reference-eval", help="results/{run}/train/reference_eval.json (the pod's)")
    parser.add_argument("--fidelity-threshold", type=float, default=10.0, help="gap in per cent")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    Path(args.output).unlink(missing_ok=True)
    alpha = int(args.lora_alpha) if args.lora_alpha.is_integer() else args.lora_alpha
    try:
        metadata = build_metadata(
            args.run,
            args.author,
            args.base_model,
            args.base_model_id,
            args.lora_rank,
            alpha,
            args.template,
            Path(args.validation),
            Path(args.peft),
        )
        if args.fidelity_losses:
            losses = _read_json(Path(args.fidelity_losses), "the bundle's measured losses")
            reference = (
                _read_json(Path(args.reference_eval), "the pod's reference evaluation")
                if (args.reference_eval)
                else None
            )
            metadata["fidelity"] = (
                {"skipped": losses["skipped"]}
                if "skipped" in losses
                else fidelity.verdict(losses, reference, args.fidelity_threshold, args.run)
            )
            if reference and "skipped" in reference:
                metadata["fidelity"]["pod_eval_skipped"] = reference["skipped"]
            if reference and "wall_time_s" in reference:
                metadata["fidelity"]["pod_eval_seconds"] = reference["wall_time_s"]
            if "seconds" in losses:
                metadata["fidelity"]["mac_eval_seconds"] = losses["seconds"]
    except (MetadataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    write_atomic(args.output, text.encode("utf-8"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
