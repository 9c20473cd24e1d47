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
a non-zero exit and nothing written. After writing, the output is checked the way mlx-lm reads
it (every tensor matched to a LoRA layer of the model, every shape right), because mlx-lm
before 0.32 silently ignores tensors it does not know.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from train_yaml import HUB_ID
from validate_dataset import read_json_object

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
MLX_CONFIG = "adapter_config.json"

# base_model.model.<decoder path>.layers.N.<path inside the block>.<part>
PEFT_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\.(?P<path>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
    r"\.(?P<part>lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)$"
)
PART_NAMES = {"lora_A.weight": "A", "lora_B.weight": "B",
              "lora_magnitude_vector": "m", "lora_magnitude_vector.weight": "m"}

# Bytes per element; LoRA weights are floating point.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
UINT_OF_SIZE = {8: "<u8", 4: "<u4", 2: "<u2"}

# init_lora_weights values that leave the base model untouched (the adapter alone is the change).
PLAIN_INITS = {True, False, "gaussian", "eva", "orthogonal"}

MERGE_HINT = ("or merge the adapter into the base model on the pod (llamafactory-cli export) and "
              "convert the merged model with mlx_lm.convert -q instead of converting an adapter")


class ConversionError(ValueError):
    """The adapter cannot be converted; the message says why and what to do."""


# --- safetensors, one tensor at a time ---------------------------------------------------------

def read_header(path: Path) -> tuple[dict, int]:
    """The tensors of a safetensors file ({name: {dtype, shape, data_offsets}}) and where data starts."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 << 20):
            raise ConversionError(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{path}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: not a safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ConversionError(f"{path}: tensor {name} has no dtype/shape/data_offsets")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_size:
            raise ConversionError(f"{path}: tensor {name} lies outside the file (truncated download?)")
        if info["dtype"] in DTYPE_SIZES and end - begin != math.prod(info["shape"]) * DTYPE_SIZES[info["dtype"]]:
            raise ConversionError(f"{path}: tensor {name} has {end - begin} bytes for shape "
                                  f"{info['shape']} of {info['dtype']}")
    return header, 8 + length


class TensorReader:
    """Reads tensors of one safetensors file into two buffers reused for every tensor (the
    bytes as stored, and a transposed copy), so memory never exceeds twice the largest tensor."""

    def __init__(self, handle, header: dict, data_start: int):
        import numpy as np

        self.np, self.handle, self.data_start = np, handle, data_start
        largest = max((end - begin for begin, end in (i["data_offsets"] for i in header.values())),
                      default=0)
        self.raw, self.out = bytearray(largest), bytearray(largest)

    def read(self, info: dict, transpose: bool = False):
        """The tensor as unsigned integers of its element width (any float dtype, bf16 too)."""
        np = self.np
        begin, end = info["data_offsets"]
        self.handle.seek(self.data_start + begin)
        view = memoryview(self.raw)[: end - begin]
        if self.handle.readinto(view) != end - begin:
            raise ConversionError(f"{self.handle.name}: file ends inside a tensor (truncated?)")
        dtype = UINT_OF_SIZE[DTYPE_SIZES[info["dtype"]]]
        array = np.frombuffer(view, dtype=dtype).reshape(info["shape"])
        if not transpose:
            return array
        result = np.frombuffer(memoryview(self.out)[: end - begin], dtype=dtype)
        result = result.reshape(info["shape"][::-1])
        np.copyto(result, array.T)
        return result


def write_safetensors(path: Path, tensors: list[tuple[str, dict, object]], metadata: dict) -> None:
    """Write tensors given as (name, {dtype, shape}, producer) where producer() returns the
    tensor's C-ordered array: the header first, from the shapes, then one tensor at a time."""
    header, offset = {}, 0
    for name, info, _ in tensors:
        nbytes = math.prod(info["shape"]) * DTYPE_SIZES[info["dtype"]]
        header[name] = {"dtype": info["dtype"], "shape": list(info["shape"]),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name, info, produce in tensors:
            array = produce()
            if not array.flags.c_contiguous:
                raise AssertionError(f"{name}: not C-ordered")
            if list(array.shape) != header[name]["shape"]:
                raise AssertionError(f"{name}: produced {array.shape}, declared {info['shape']}")
            out.write(memoryview(array))  # C-contiguous already: no third copy


# --- what the adapter is -----------------------------------------------------------------------

@dataclass
class Module:
    """One LoRA-wrapped linear layer: its tensors' names in the PEFT file."""
    layer: int
    path: str  # inside the block, e.g. self_attn.q_proj
    parts: dict[str, str] = field(default_factory=dict)  # A/B/m -> PEFT tensor name

    @property
    def name(self) -> str:
        """The module's name in the base model, as PEFT's rank_pattern matches it."""
        return f"model.layers.{self.layer}.{self.path}"


@dataclass
class Plan:
    modules: list[Module]
    rank: int
    alpha: float
    scale: float
    dora: bool
    dropout: float
    keys: list[str]
    layers: list[int]
    num_layers: int
    base_layers: int | None
    base_source: str | None


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's rule (peft.utils.other.get_pattern_key): the first key matching the name's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def config_problems(cfg: dict) -> list[str]:
    """Every reason in adapter_config.json that makes the adapter unrepresentable in mlx-lm."""
    problems = []
    peft_type = cfg.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(
            f"peft_type is {peft_type}, not LORA: mlx-lm loads LoRA and DoRA adapters only. "
            "Train with finetuning_type: lora, " + MERGE_HINT + ".")
    if cfg.get("modules_to_save"):
        problems.append(
            f"modules_to_save {cfg['modules_to_save']}: the adapter carries full trained copies of "
            "these modules (LLaMA-Factory adds them for resize_vocab, new special tokens or "
            "additional_target), which an mlx-lm LoRA adapter cannot hold. Retrain without them, "
            + MERGE_HINT + ".")
    if cfg.get("trainable_token_indices"):
        problems.append(
            "trainable_token_indices: the adapter retrains rows of the embedding matrix, which an "
            "mlx-lm LoRA adapter cannot hold. Retrain without them, " + MERGE_HINT + ".")
    if cfg.get("bias", "none") != "none":
        problems.append(
            f"bias is '{cfg['bias']}': training also changed the base model's bias vectors, which "
            "mlx-lm's LoRA layers do not carry. Retrain with bias 'none', " + MERGE_HINT + ".")
    if cfg.get("lora_bias"):
        problems.append(
            "lora_bias is true: lora_B has a bias vector, which mlx-lm's LoRALinear does not have. "
            "Retrain without lora_bias, " + MERGE_HINT + ".")
    if cfg.get("fan_in_fan_out"):
        problems.append(
            "fan_in_fan_out is true: the adapter was made for Conv1D layers (GPT-2 style) whose "
            "weights are stored transposed; mlx-lm's models use Linear layers. Use a base model "
            "with Linear layers (Qwen2, Llama, Mistral).")
    if cfg.get("layer_replication"):
        problems.append(
            "layer_replication: the adapter expects a base model with duplicated blocks, which "
            "mlx-lm does not build. Retrain without layer_replication.")
    if cfg.get("target_parameters"):
        problems.append(
            f"target_parameters {cfg['target_parameters']}: LoRA on raw parameters (e.g. MoE "
            "experts) has no mlx-lm LoRA layer. Retrain with target_modules only, " + MERGE_HINT + ".")
    init = cfg.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        problems.append(
            f"init_lora_weights is '{init}': with PiSSA/OLoRA/CorDA/LoftQ the adapter belongs to a "
            "modified base model, not to the original one mlx_lm.convert quantises. Save it "
            "converted to plain LoRA (LLaMA-Factory: pissa_convert: true; PEFT: "
            "path_initial_model_for_weight_conversion), " + MERGE_HINT + ".")
    for key, what in (("use_qalora", "QA-LoRA pools the layer input"),
                      ("use_bdlora", "BD-LoRA uses block-diagonal factors"),
                      ("alora_invocation_tokens", "activated LoRA applies only after its "
                                                  "invocation tokens"),
                      ("arrow_config", "Arrow routes between several adapters")):
        if cfg.get(key):
            problems.append(f"{key} is set: {what}, which mlx-lm's LoRA layers do not do. "
                            "Retrain as plain LoRA, " + MERGE_HINT + ".")
    return problems


def collect_modules(header: dict, where: str) -> list[Module]:
    """Group the PEFT tensors by module; refuse tensors that are not LoRA factors of a block."""
    modules: dict[tuple[int, str], Module] = {}
    strangers = []
    for name in header:
        match = PEFT_KEY.match(name)
        if not match:
            strangers.append(name)
            continue
        layer, path = int(match["layer"]), match["path"]
        module = modules.setdefault((layer, path), Module(layer, path))
        module.parts[PART_NAMES[match["part"]]] = name
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" (+{len(strangers) - 5} more)" if len(strangers) > 5 else "")
        raise ConversionError(
            f"{where}: {len(strangers)} tensor(s) are not LoRA factors of a decoder block "
            f"(base_model.model.model.layers.N.<module>.lora_A/lora_B): {shown}. LoRA on "
            "embeddings or lm_head, trained biases and full module copies have no place in an "
            "mlx-lm adapter. Retrain with lora_target on the blocks' linear layers only, "
            + MERGE_HINT + ".")
    if not modules:
        raise ConversionError(f"{where}: no LoRA tensors in the file")
    for module in modules.values():
        missing = {"A", "B"} - module.parts.keys()
        if missing:
            raise ConversionError(f"{where}: {module.name} has no lora_{'/'.join(sorted(missing))} "
                                  "tensor; the file is incomplete")
    return sorted(modules.values(), key=lambda m: (m.layer, m.path))


def check_shapes(modules: list[Module], header: dict, rank: int, where: str) -> None:
    for module in modules:
        a, b = header[module.parts["A"]], header[module.parts["B"]]
        for part, info in (("lora_A", a), ("lora_B", b)):
            if info["dtype"] not in DTYPE_SIZES:
                raise ConversionError(f"{where}: {module.name}.{part} has dtype {info['dtype']}; "
                                      "LoRA factors are floating point (F32, F16, BF16)")
            if len(info["shape"]) != 2:
                raise ConversionError(f"{where}: {module.name}.{part} has shape {info['shape']}; a "
                                      "LoRA factor is a matrix (an incompletely gathered ZeRO-3/FSDP save?)")
        if a["shape"][0] != rank or b["shape"][1] != rank:
            raise ConversionError(
                f"{where}: {module.name} has rank {a['shape'][0]} (lora_A {a['shape']}, lora_B "
                f"{b['shape']}), adapter_config.json says r={rank}; the config does not belong "
                "to these weights")
        if "m" in module.parts:
            m = header[module.parts["m"]]
            if m["dtype"] not in DTYPE_SIZES or m["shape"] != [b["shape"][0]]:
                raise ConversionError(f"{where}: {module.name}.lora_magnitude_vector has shape "
                                      f"{m['shape']}, expected [{b['shape'][0]}]")


def base_layer_count(config: dict) -> int | None:
    for cfg in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return None


def read_json(path: Path) -> dict:
    return read_json_object(path, ConversionError)


def find_base_config(base: str | None, adapter_cfg: dict) -> tuple[dict | None, str | None]:
    """The base model's config.json and where it was found (see the module docstring)."""
    if base:
        path = Path(base).expanduser() / "config.json"
        if not path.is_file():
            raise ConversionError(f"--base {base}: no config.json there; pass the base model's "
                                  "directory or its MLX conversion (models/<base>-4bit-mlx)")
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


def plan_conversion(cfg: dict, header: dict, base_config: dict | None, base_source: str | None,
                    where: str) -> Plan:
    problems = config_problems(cfg)
    if problems:
        raise ConversionError(f"{where}: this adapter cannot be converted to an mlx-lm adapter:\n"
                              + "\n".join(f"  - {p}" for p in problems))
    modules = collect_modules(header, where)
    missing = [key for key in ("r", "lora_alpha") if not isinstance(cfg.get(key), (int, float))]
    if missing:
        raise ConversionError(f"{where}: adapter_config.json has no numeric {' or '.join(missing)}")
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    own = {m.name: (int(_pattern_value(rank_pattern, m.name, rank)),
                    float(_pattern_value(alpha_pattern, m.name, alpha))) for m in modules}
    odd = [f"{name} (r={r}, alpha={a:g})" for name, (r, a) in own.items() if (r, a) != (rank, alpha)]
    if odd:
        raise ConversionError(
            f"{where}: rank_pattern/alpha_pattern give {len(odd)} module(s) a rank or alpha other "
            f"than r={rank}, lora_alpha={alpha:g}: {', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''}. "
            "An mlx-lm adapter has one rank and one scale for every layer. Retrain without "
            "rank_pattern/alpha_pattern, " + MERGE_HINT + ".")
    check_shapes(modules, header, rank, where)

    dora = bool(cfg.get("use_dora"))
    with_m = sum("m" in m.parts for m in modules)
    if dora and with_m != len(modules):
        raise ConversionError(f"{where}: use_dora is true but {len(modules) - with_m} module(s) have "
                              "no lora_magnitude_vector; the file is incomplete")
    if not dora and with_m:
        raise ConversionError(f"{where}: the file has DoRA magnitude vectors but use_dora is false; "
                              "adapter_config.json does not belong to these weights")

    layers = sorted({m.layer for m in modules})
    base_layers = base_layer_count(base_config) if base_config else None
    if base_config and base_layers is None:
        raise ConversionError(f"{base_source}: no num_hidden_layers; is this a decoder model's config?")
    if base_layers is not None:
        if layers[-1] >= base_layers:
            raise ConversionError(
                f"{where}: the adapter trains block {layers[-1]} but the base model ({base_source}) "
                f"has {base_layers} blocks: it was trained on another base model. Pass the right "
                "--base (the run's base_model).")
        num_layers = base_layers - layers[0]
    elif layers[0] == 0:
        num_layers = -1  # mlx-lm: every block
    else:
        raise ConversionError(
            f"{where}: the adapter trains blocks {layers[0]}..{layers[-1]} only (layers_to_transform="
            f"{cfg.get('layers_to_transform')}), and mlx-lm wraps the LAST num_layers blocks, so the "
            "base model's layer count is needed and was not found (base_model_name_or_path "
            f"'{cfg.get('base_model_name_or_path')}' is neither a local directory nor in the local "
            "Hugging Face cache). Pass --base DIR: the base model's directory or its MLX conversion "
            "(models/<base>-4bit-mlx), anything with its config.json.")
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return Plan(modules=modules, rank=rank, alpha=alpha, scale=scale, dora=dora,
                dropout=float(cfg.get("lora_dropout") or 0.0),
                keys=sorted({m.path for m in modules}), layers=layers, num_layers=num_layers,
                base_layers=base_layers, base_source=base_source)


def mlx_config(plan: Plan, cfg: dict) -> dict:
    return {
        "fine_tune_type": "dora" if plan.dora else "lora",
        "num_layers": plan.num_layers,
        "lora_parameters": {"rank": plan.rank, "scale": plan.scale, "dropout": plan.dropout,
                            "keys": plan.keys},
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
            out.append((f"{prefix}.{suffix}", {"dtype": info["dtype"], "shape": shape},
                        lambda info=info, transpose=transpose: reader.read(info, transpose)))
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
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import _get_classes

        try:
            model_class, args_class = _get_classes(base_config)
        except ValueError as exc:
            raise ConversionError(f"the base model cannot be built by this mlx-lm: {exc}") from None
        model = model_class(args_class.from_dict(base_config))  # lazy: no weights in memory
        linear_to_lora_layers(model, cfg["num_layers"], params, use_dora=cfg["fine_tune_type"] == "dora")
        allowed = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())
                   if name.rsplit(".", 1)[-1] in leaves}
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
        raise ConversionError(f"{out_dir}: the written adapter does not fit the model mlx-lm builds:\n"
                              + "\n".join(f"  {e}" for e in errors[:20]))
    return f"{len(weights)} tensors {how}"


def human_size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return ""


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
            hint = ("it holds adapter_model.bin (pickle); re-save the adapter with "
                    "save_pretrained(..., safe_serialization=True)")
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
    header, data_start = read_header(weights_path)
    base_config, base_source = find_base_config(base, cfg)
    plan = plan_conversion(cfg, header, base_config, base_source, str(weights_path))

    out.mkdir(parents=True, exist_ok=True)
    # Write and check in a staging folder beside the targets, then move the files into place.
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".convert."))
    try:
        with open(weights_path, "rb") as handle:
            tensors = output_tensors(plan, header, TensorReader(handle, header, data_start))
            write_safetensors(staging / MLX_WEIGHTS, tensors, {"format": "mlx"})
        (staging / MLX_CONFIG).write_text(json.dumps(mlx_config(plan, cfg), indent=2) + "\n",
                                          encoding="utf-8")
        summary = verify(staging, base_config)
        for target in targets:  # the config last: mlx-lm opens it first
            os.replace(staging / target.name, target)
    except BaseException:
        for target in targets:
            target.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()

    largest = max(math.prod(header[n]["shape"]) * DTYPE_SIZES[header[n]["dtype"]]
                  for m in plan.modules for n in m.parts.values())
    base_text = (f"base model: {plan.base_layers} blocks ({plan.base_source})"
                 if plan.base_layers is not None else "base model's block count unknown")
    log(f"{weights_path}: {len(plan.modules)} LoRA modules ({', '.join(plan.keys)}) in blocks "
        f"{plan.layers[0]}..{plan.layers[-1]}, rank {plan.rank}, alpha {plan.alpha:g}"
        f"{' (rsLoRA)' if cfg.get('use_rslora') else ''}{' DoRA' if plan.dora else ''}")
    log(f"mlx-lm: fine_tune_type {'dora' if plan.dora else 'lora'}, scale {plan.scale:g}, "
        f"num_layers {plan.num_layers} ({base_text})")
    log(f"wrote {targets[0]} ({human_size(targets[0].stat().st_size)}, streamed through two "
        f"buffers of the largest tensor's size: {human_size(2 * largest)}) and {targets[1]}")
    log(f"check: {summary}")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True,
                        help="PEFT adapter folder (adapter_config.json, adapter_model.safetensors)")
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
