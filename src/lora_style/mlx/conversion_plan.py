"""Whether a PEFT LoRA adapter can become an mlx-lm adapter, and with which numbers.

Reads only adapter_config.json and the safetensors header (no tensor data): every reason the
adapter is unrepresentable in mlx-lm is refused with what to do instead; otherwise the plan
gives the modules to convert, the rank, the scale (``lora_alpha / r``, or ``/ sqrt(r)`` with
rsLoRA) and ``num_layers`` (mlx-lm wraps the LAST ``num_layers`` blocks, so it is the base
model's layer count minus the lowest trained layer). scripts/convert_peft_to_mlx.py carries it out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from lora_style.fileio import UserError
from lora_style.safetensors_io import DTYPE_SIZES

# base_model.model.<decoder path>.layers.N.<path inside the block>.<part>
PEFT_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\.(?P<path>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
    r"\.(?P<part>lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)$"
)
PART_NAMES = {
    "lora_A.weight": "A",
    "lora_B.weight": "B",
    "lora_magnitude_vector": "m",
    "lora_magnitude_vector.weight": "m",
}

# init_lora_weights values that leave the base model untouched (the adapter alone is the change).
PLAIN_INITS = {True, False, "gaussian", "eva", "orthogonal"}

MERGE_HINT = (
    "or merge the adapter into the base model on the pod (llamafactory-cli export) and "
    "convert the merged model with mlx_lm.convert -q instead of converting an adapter"
)


class ConversionError(UserError):
    """The adapter cannot be converted; the message says why and what to do."""


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
            "Train with finetuning_type: lora, " + MERGE_HINT + "."
        )
    if cfg.get("modules_to_save"):
        problems.append(
            f"modules_to_save {cfg['modules_to_save']}: the adapter carries full trained copies of "
            "these modules (LLaMA-Factory adds them for resize_vocab, new special tokens or "
            "additional_target), which an mlx-lm LoRA adapter cannot hold. Retrain without them, "
            + MERGE_HINT
            + "."
        )
    if cfg.get("trainable_token_indices"):
        problems.append(
            "trainable_token_indices: the adapter retrains rows of the embedding matrix, which an "
            "mlx-lm LoRA adapter cannot hold. Retrain without them, " + MERGE_HINT + "."
        )
    if cfg.get("bias", "none") != "none":
        problems.append(
            f"bias is '{cfg['bias']}': training also changed the base model's bias vectors, which "
            "mlx-lm's LoRA layers do not carry. Retrain with bias 'none', " + MERGE_HINT + "."
        )
    if cfg.get("lora_bias"):
        problems.append(
            "lora_bias is true: lora_B has a bias vector, which mlx-lm's LoRALinear does not have. "
            "Retrain without lora_bias, " + MERGE_HINT + "."
        )
    if cfg.get("fan_in_fan_out"):
        problems.append(
            "fan_in_fan_out is true: the adapter was made for Conv1D layers (GPT-2 style) whose "
            "weights are stored transposed; mlx-lm's models use Linear layers. Use a base model "
            "with Linear layers (Qwen2, Llama, Mistral)."
        )
    if cfg.get("layer_replication"):
        problems.append(
            "layer_replication: the adapter expects a base model with duplicated blocks, which "
            "mlx-lm does not build. Retrain without layer_replication."
        )
    if cfg.get("target_parameters"):
        problems.append(
            f"target_parameters {cfg['target_parameters']}: LoRA on raw parameters (e.g. MoE "
            "experts) has no mlx-lm LoRA layer. Retrain with target_modules only, " + MERGE_HINT + "."
        )
    init = cfg.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        problems.append(
            f"init_lora_weights is '{init}': with PiSSA/OLoRA/CorDA/LoftQ the adapter belongs to a "
            "modified base model, not to the original one mlx_lm.convert quantises. Save it "
            "converted to plain LoRA (LLaMA-Factory: pissa_convert: true; PEFT: "
            "path_initial_model_for_weight_conversion), " + MERGE_HINT + "."
        )
    for key, what in (
        ("use_qalora", "QA-LoRA pools the layer input"),
        ("use_bdlora", "BD-LoRA uses block-diagonal factors"),
        ("alora_invocation_tokens", "activated LoRA applies only after its invocation tokens"),
        ("arrow_config", "Arrow routes between several adapters"),
    ):
        if cfg.get(key):
            problems.append(
                f"{key} is set: {what}, which mlx-lm's LoRA layers do not do. "
                "Retrain as plain LoRA, " + MERGE_HINT + "."
            )
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
            "mlx-lm adapter. Retrain with lora_target on the blocks' linear layers only, " + MERGE_HINT + "."
        )
    if not modules:
        raise ConversionError(f"{where}: no LoRA tensors in the file")
    for module in modules.values():
        missing = {"A", "B"} - module.parts.keys()
        if missing:
            raise ConversionError(
                f"{where}: {module.name} has no lora_{'/'.join(sorted(missing))} "
                "tensor; the file is incomplete"
            )
    return sorted(modules.values(), key=lambda m: (m.layer, m.path))


def check_shapes(modules: list[Module], header: dict, rank: int, where: str) -> None:
    for module in modules:
        a, b = header[module.parts["A"]], header[module.parts["B"]]
        for part, info in (("lora_A", a), ("lora_B", b)):
            if info["dtype"] not in DTYPE_SIZES:
                raise ConversionError(
                    f"{where}: {module.name}.{part} has dtype {info['dtype']}; "
                    "LoRA factors are floating point (F32, F16, BF16)"
                )
            if len(info["shape"]) != 2:
                raise ConversionError(
                    f"{where}: {module.name}.{part} has shape {info['shape']}; a "
                    "LoRA factor is a matrix (an incompletely gathered ZeRO-3/FSDP save?)"
                )
        if a["shape"][0] != rank or b["shape"][1] != rank:
            raise ConversionError(
                f"{where}: {module.name} has rank {a['shape'][0]} (lora_A {a['shape']}, lora_B "
                f"{b['shape']}), adapter_config.json says r={rank}; the config does not belong "
                "to these weights"
            )
        if "m" in module.parts:
            m = header[module.parts["m"]]
            if m["dtype"] not in DTYPE_SIZES or m["shape"] != [b["shape"][0]]:
                raise ConversionError(
                    f"{where}: {module.name}.lora_magnitude_vector has shape "
                    f"{m['shape']}, expected [{b['shape'][0]}]"
                )


def base_layer_count(config: dict) -> int | None:
    for cfg in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return None


def plan_conversion(
    cfg: dict, header: dict, base_config: dict | None, base_source: str | None, where: str
) -> Plan:
    problems = config_problems(cfg)
    if problems:
        raise ConversionError(
            f"{where}: this adapter cannot be converted to an mlx-lm adapter:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    modules = collect_modules(header, where)
    missing = [key for key in ("r", "lora_alpha") if not isinstance(cfg.get(key), (int, float))]
    if missing:
        raise ConversionError(f"{where}: adapter_config.json has no numeric {' or '.join(missing)}")
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    own = {
        m.name: (
            int(_pattern_value(rank_pattern, m.name, rank)),
            float(_pattern_value(alpha_pattern, m.name, alpha)),
        )
        for m in modules
    }
    odd = [f"{name} (r={r}, alpha={a:g})" for name, (r, a) in own.items() if (r, a) != (rank, alpha)]
    if odd:
        raise ConversionError(
            f"{where}: rank_pattern/alpha_pattern give {len(odd)} module(s) a rank or alpha other "
            f"than r={rank}, lora_alpha={alpha:g}: {', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''}. "
            "An mlx-lm adapter has one rank and one scale for every layer. Retrain without "
            "rank_pattern/alpha_pattern, " + MERGE_HINT + "."
        )
    check_shapes(modules, header, rank, where)

    dora = bool(cfg.get("use_dora"))
    with_m = sum("m" in m.parts for m in modules)
    if dora and with_m != len(modules):
        raise ConversionError(
            f"{where}: use_dora is true but {len(modules) - with_m} module(s) have "
            "no lora_magnitude_vector; the file is incomplete"
        )
    if not dora and with_m:
        raise ConversionError(
            f"{where}: the file has DoRA magnitude vectors but use_dora is false; "
            "adapter_config.json does not belong to these weights"
        )

    layers = sorted({m.layer for m in modules})
    base_layers = base_layer_count(base_config) if base_config else None
    if base_config and base_layers is None:
        raise ConversionError(f"{base_source}: no num_hidden_layers; is this a decoder model's config?")
    if base_layers is not None:
        if layers[-1] >= base_layers:
            raise ConversionError(
                f"{where}: the adapter trains block {layers[-1]} but the base model ({base_source}) "
                f"has {base_layers} blocks: it was trained on another base model. Pass the right "
                "--base (the run's base_model)."
            )
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
            "(models/<base>-4bit-mlx), anything with its config.json."
        )
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return Plan(
        modules=modules,
        rank=rank,
        alpha=alpha,
        scale=scale,
        dora=dora,
        dropout=float(cfg.get("lora_dropout") or 0.0),
        keys=sorted({m.path for m in modules}),
        layers=layers,
        num_layers=num_layers,
        base_layers=base_layers,
        base_source=base_source,
    )
