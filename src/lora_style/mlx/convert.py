"""Convert a PEFT LoRA adapter (what LLaMA-Factory saves) into an mlx-lm adapter (the guide's step 7).

    python scripts/convert_peft_to_mlx.py --input lora_adapters/lovecraft_peft \
        --output lora_adapters/lovecraft_mlx --base models/Qwen2.5-32B-4bit-mlx

Reads ``adapter_config.json`` and ``adapter_model.safetensors`` from --input and writes
``adapters.safetensors`` and ``adapter_config.json`` to --output, which ``mlx_lm.load(base,
adapter_path=...)`` and ``mlx_lm.generate --adapter-path`` read:

- keys ``base_model.model.model.layers.N.<path>.lora_A.weight`` become
  ``model.layers.N.<path>.lora_a``; ``lora_A [r, in]`` is stored transposed as ``lora_a [in, r]``
  and ``lora_B [out, r]`` as ``lora_b [r, out]``; DoRA's ``lora_magnitude_vector`` becomes ``m``
  (mlx-lm's DoRALinear computes exactly what PEFT's DoRA does, so DoRA converts exactly);
- ``lora_parameters.scale`` is PEFT's final multiplier: ``lora_alpha / r``, or
  ``lora_alpha / sqrt(r)`` with ``use_rslora``;
- ``num_layers``: mlx-lm wraps the LAST ``num_layers`` blocks, so it is the base model's layer
  count minus the lowest trained layer. Blocks inside that range that PEFT did not train
  (``layers_to_transform`` with gaps) get no tensors: mlx-lm starts ``lora_b`` (and so the
  update) at zero, which is exactly "not trained".

Where the base model's layer count comes from, first match wins: ``--base DIR`` (the base
model or its MLX conversion: anything with a ``config.json``); the adapter's
``base_model_name_or_path`` when that is a local directory; the local Hugging Face cache for a
hub id (looked up offline, never downloaded). Without any of these the count is not needed
when the adapter trains block 0 (``num_layers: -1``, mlx-lm's "all blocks"); otherwise the
conversion stops and asks for ``--base``.

Memory: tensors are read one at a time from the input file and written one at a time to
the output file (its header is computed first from the input's header), so peak memory is
about twice the largest single tensor (its bytes plus the transposed copy): ~14 MB for the
guide's Qwen2.5-32B rank-64 adapter (~2 GB in all), whatever the adapter's total size.

Adapters an mlx-lm LoRA adapter cannot represent are refused, with the reason and what to do,
a non-zero exit and nothing written. After writing, the output is loaded with mlx-lm's own
adapter loader onto the base model built from its config.json, and every tensor is matched to a
LoRA parameter of that model with its shape, because mlx-lm before 0.32 silently ignores tensors
it does not know.

What is decided (refusals, rank, scale, num_layers) lives in conversion_plan.py, the
streaming in lora_style/safetensors_io.py; this file finds the inputs, writes, checks and lands.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from lora_style.config.train_yaml import HUB_ID
from lora_style.fileio import land, read_json_object, staged_dir
from lora_style.mlx.conversion_plan import ConversionError, Plan, plan_conversion
from lora_style.safetensors_io import TensorReader, human_size, read_header, tensor_bytes, write_safetensors

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
MLX_CONFIG = "adapter_config.json"


def read_json(path: Path) -> dict:
    return read_json_object(path, ConversionError)


def find_base_config(base: str | None, adapter_cfg: dict) -> tuple[dict | None, str | None]:
    """The base model's config.json and where it was found (see the module docstring)."""
    if base:
        path = Path(base).expanduser() / "config.json"
        if not path.is_file():
            raise ConversionError(
                f"--base {base}: no config.json there; pass the base model's "
                "directory or its MLX conversion (models/<base>-4bit-mlx)"
            )
        return read_json(path), str(path)
    name = adapter_cfg.get("base_model_name_or_path") or ""
    if name:
        path = Path(name).expanduser() / "config.json"
        if path.is_file():
            return read_json(path), str(path)
        if HUB_ID.match(name):
            try:  # the local Hugging Face cache only; never a download
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(name, "config.json")
            except Exception:  # noqa: BLE001 (no cache, no hub library: just not found)
                cached = None
            if isinstance(cached, str) and Path(cached).is_file():
                return read_json(Path(cached)), cached
    return None, None


def mlx_config(plan: Plan, cfg: dict) -> dict:
    return {
        "fine_tune_type": "dora" if plan.dora else "lora",
        "num_layers": plan.num_layers,
        "lora_parameters": {
            "rank": plan.rank,
            "scale": plan.scale,
            "dropout": plan.dropout,
            "keys": plan.keys,
        },
        # Provenance only; mlx-lm ignores these keys.
        "converted_from": {
            "peft_type": cfg.get("peft_type", "LORA"),
            "peft_version": cfg.get("peft_version"),
            "base_model_name_or_path": cfg.get("base_model_name_or_path"),
            "r": plan.rank,
            "lora_alpha": plan.alpha,
            "use_rslora": bool(cfg.get("use_rslora")),
            "use_dora": plan.dora,
            "trained_layers": plan.layers,
            "base_num_layers": plan.base_layers,
        },
    }


def output_tensors(plan: Plan, header: dict, reader: TensorReader) -> list:
    """(mlx name, {dtype, shape}, producer) for every output tensor, in name order."""
    out = []
    for module in plan.modules:
        prefix = f"model.layers.{module.layer}.{module.path}"
        for part, suffix in (("A", "lora_a"), ("B", "lora_b"), ("m", "m")):
            if part not in module.parts:
                continue
            info = header[module.parts[part]]
            transpose = part in ("A", "B")
            shape = info["shape"][::-1] if transpose else info["shape"]
            out.append(
                (
                    f"{prefix}.{suffix}",
                    {"dtype": info["dtype"], "shape": shape},
                    lambda info=info, transpose=transpose: reader.read(info, transpose),
                )
            )
    return sorted(out, key=lambda t: t[0])


# --- the check, as mlx-lm reads it ---------------------------------------------------------------


def verify(out_dir: Path, base_config: dict | None) -> str:
    """Load the written adapter as mlx-lm does and match every tensor to a LoRA parameter of
    the model. With the base's config the model is built lazily (no weights, no memory) and
    mlx-lm itself wraps its layers; without it the names and shapes are checked for mlx-lm's
    layout. Returns a one-line summary; raises ConversionError on any mismatch."""
    import mlx.core as mx

    cfg = json.loads((out_dir / MLX_CONFIG).read_text(encoding="utf-8"))
    params = cfg["lora_parameters"]
    for key in ("rank", "scale", "dropout", "keys"):
        if key not in params:
            raise ConversionError(f"{out_dir / MLX_CONFIG}: lora_parameters lacks '{key}'")
    weights = mx.load(str(out_dir / MLX_WEIGHTS))  # lazy: shapes only, nothing read
    leaves = {"lora_a", "lora_b", "m"} if cfg["fine_tune_type"] == "dora" else {"lora_a", "lora_b"}
    errors = []
    if base_config is not None:
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import load_adapters

        model = _model_from_config(base_config)  # lazy: no weights in memory
        refused = None
        try:
            load_adapters(model, str(out_dir))  # mlx-lm's own loader wraps the layers
        except ValueError as exc:  # mlx-lm 0.32 checks too; ours below names each tensor
            refused = str(exc).splitlines()[0]
        allowed = {
            name: tuple(p.shape)
            for name, p in tree_flatten(model.parameters())
            if name.rsplit(".", 1)[-1] in leaves
        }
        how = f"matched to the LoRA layers mlx-lm builds on the base model ({len(allowed)} parameters)"
    else:
        allowed = None
        how = "checked for mlx-lm's names and shapes (no base config: model not built)"
    shapes: dict[str, tuple] = {}
    for name, array in weights.items():
        shape = tuple(array.shape)
        if allowed is not None:
            if name not in allowed:
                errors.append(f"{name}: not a LoRA parameter of the model mlx-lm builds")
            elif shape != allowed[name]:
                errors.append(f"{name}: shape {shape}, the model's parameter is {allowed[name]}")
            continue
        match = re.match(r"^model\.layers\.(\d+)\.(.+)\.(lora_a|lora_b|m)$", name)
        if not match or match[2] not in params["keys"] or match[3] not in leaves:
            errors.append(f"{name}: not a name mlx-lm gives a LoRA parameter")
            continue
        rank_axis = {"lora_a": 1, "lora_b": 0}.get(match[3])
        if rank_axis is not None and (len(shape) != 2 or shape[rank_axis] != params["rank"]):
            errors.append(f"{name}: shape {shape} does not have rank {params['rank']} on axis {rank_axis}")
        previous = shapes.setdefault(f"{match[2]}.{match[3]}", shape)
        if previous != shape:
            errors.append(f"{name}: shape {shape}, the same layer elsewhere is {previous}")
    if errors:
        raise ConversionError(
            f"{out_dir}: the written adapter does not fit the model mlx-lm builds:\n"
            + "\n".join(f"  {e}" for e in errors[:20])
        )
    if base_config is not None and refused:
        raise ConversionError(f"{out_dir}: mlx-lm refuses the written adapter: {refused}")
    return f"{len(weights)} tensors {how}"


# --- mlx-lm's model, from the base's config.json ------------------------------------------------
# mlx-lm's public pieces: its per-architecture modules (mlx_lm.models.<type>: Model, ModelArgs),
# its MODEL_REMAPPING, and its adapter loader (mlx_lm.tuner.utils.load_adapters, which wraps the
# last num_layers blocks as it does at inference). Built from the config alone, so nothing of
# the base's weights is read, which a 32B base would make slow.


def _model_from_config(config: dict):
    import importlib

    from mlx_lm import utils

    model_type = config.get("model_type", "")
    architectures = config.get("architectures") or ()
    if isinstance(architectures, str):
        architectures = (architectures,)
    by_architecture = getattr(utils, "MODEL_ARCHITECTURE_REMAPPING", {})  # not in every version
    for architecture in architectures:
        if (model_type, architecture) in by_architecture:
            model_type = by_architecture[(model_type, architecture)]
            break
    else:
        model_type = getattr(utils, "MODEL_REMAPPING", {}).get(model_type, model_type)
    try:
        module = importlib.import_module(f"mlx_lm.models.{model_type}")
    except ImportError:
        raise ConversionError(
            f"the base model cannot be built by this mlx-lm: model type "
            f"'{model_type}' is not one it knows (upgrade mlx-lm)"
        ) from None
    return module.Model(module.ModelArgs.from_dict(config))


# --- the command -----------------------------------------------------------------------------------


def find_input(input_dir: Path) -> tuple[Path, Path]:
    config, weights = input_dir / PEFT_CONFIG, input_dir / PEFT_WEIGHTS
    if not input_dir.is_dir():
        raise ConversionError(f"--input {input_dir}: no such directory")
    if not weights.is_file():
        checkpoints = sorted(p.name for p in input_dir.glob("checkpoint-*") if p.is_dir())
        if checkpoints:
            hint = f"it holds {', '.join(checkpoints)}: pass one of them as --input"
        elif (input_dir / "adapter_model.bin").is_file():
            hint = (
                "it holds adapter_model.bin (pickle); re-save the adapter with "
                "save_pretrained(..., safe_serialization=True)"
            )
        else:
            hint = "pass the folder PEFT/LLaMA-Factory saved the adapter in"
        raise ConversionError(f"--input {input_dir}: no {PEFT_WEIGHTS}; {hint}")
    if not config.is_file():
        raise ConversionError(f"--input {input_dir}: no {PEFT_CONFIG} beside {PEFT_WEIGHTS}")
    return config, weights


def convert(input_dir: str, output_dir: str, base: str | None = None, log=print) -> Plan:
    """Convert, check, then move the two files into place; on any error nothing is left."""
    input_dir, out = Path(input_dir), Path(output_dir)
    targets = [out / MLX_WEIGHTS, out / MLX_CONFIG]
    # Nothing stale may survive a failed conversion.
    for target in targets:
        target.unlink(missing_ok=True)
    created = not out.exists()
    config_path, weights_path = find_input(input_dir)
    cfg = read_json(config_path)
    header, data_start = read_header(weights_path, ConversionError)
    base_config, base_source = find_base_config(base, cfg)
    plan = plan_conversion(cfg, header, base_config, base_source, str(weights_path))

    out.mkdir(parents=True, exist_ok=True)
    try:
        # Written and checked in a staging folder beside the output, then moved into place file
        # by file: the output folder is shared (metadata.json is another rule's).
        with staged_dir(out) as stage:
            stage.mkdir()
            with open(weights_path, "rb") as handle:
                reader = TensorReader(handle, header, data_start, ConversionError)
                write_safetensors(
                    stage / MLX_WEIGHTS, output_tensors(plan, header, reader), {"format": "mlx"}
                )
                del reader  # its two buffers, before the check builds the model beside them
            (stage / MLX_CONFIG).write_text(
                json.dumps(mlx_config(plan, cfg), indent=2) + "\n", encoding="utf-8"
            )
            summary = verify(stage, base_config)
            for target in targets:  # the config last: mlx-lm opens it first
                land(stage / target.name, target)
    except BaseException:
        for target in targets:
            target.unlink(missing_ok=True)
        raise
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()

    largest = max(tensor_bytes(header[n]) for m in plan.modules for n in m.parts.values())
    base_text = (
        f"base model: {plan.base_layers} blocks ({plan.base_source})"
        if plan.base_layers is not None
        else "base model's block count unknown"
    )
    log(
        f"{weights_path}: {len(plan.modules)} LoRA modules ({', '.join(plan.keys)}) in blocks "
        f"{plan.layers[0]}..{plan.layers[-1]}, rank {plan.rank}, alpha {plan.alpha:g}"
        f"{' (rsLoRA)' if cfg.get('use_rslora') else ''}{' DoRA' if plan.dora else ''}"
    )
    log(
        f"mlx-lm: fine_tune_type {'dora' if plan.dora else 'lora'}, scale {plan.scale:g}, "
        f"num_layers {plan.num_layers} ({base_text})"
    )
    log(
        f"wrote {targets[0]} ({human_size(targets[0].stat().st_size)}, streamed through two "
        f"buffers of the largest tensor's size: {human_size(2 * largest)}) and {targets[1]}"
    )
    log(f"check: {summary}")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", required=True, help="PEFT adapter folder (adapter_config.json, adapter_model.safetensors)"
    )
    parser.add_argument("--output", required=True, help="mlx-lm adapter folder to write")
    parser.add_argument("--base", help="base model folder or its MLX conversion (for its config.json)")
    args = parser.parse_args(argv)
    try:
        convert(args.input, args.output, args.base)
    except ConversionError as exc:
        print(f"error: {exc}\nnothing written to {args.output}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
