"""What a run needs: GPU memory, disk for its checkpoints, and the number of steps.

The memory estimate is calibrated on the guide's "Memory Requirements" for Qwen2.5-32B; preflight
compares it with the GPUs the pod reports, before anything is uploaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lora_style.config.train_yaml import LLAMAFACTORY_DEFAULTS, deepspeed_file


def setting(args: dict, key: str):
    """A training argument, or LLaMA-Factory's default for it (train_yaml fills the same ones)."""
    value = args.get(key)
    return LLAMAFACTORY_DEFAULTS[key] if value is None else value


GB = 1e9


@dataclass(frozen=True)
class Arch:
    """What the estimate needs to know about a base model."""

    params: float  # all parameters, embeddings included
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # num_key_value_heads * head_dim
    vocab: int


# Qwen2.5 base models (their config.json files), by the size in the hub id.
QWEN25 = {
    "0.5": Arch(0.49e9, 896, 4864, 24, 128, 151936),
    "1.5": Arch(1.54e9, 1536, 8960, 28, 256, 151936),
    "3": Arch(3.09e9, 2048, 11008, 36, 256, 151936),
    "7": Arch(7.61e9, 3584, 18944, 28, 512, 152064),
    "14": Arch(14.7e9, 5120, 13824, 48, 1024, 152064),
    "32": Arch(32.5e9, 5120, 27648, 64, 1024, 152064),
    "72": Arch(72.7e9, 8192, 29568, 80, 1024, 152064),
}
QWEN25_NAME = re.compile(r"qwen2\.5-(\d+(?:\.\d+)?)b", re.IGNORECASE)


def arch_from_config(config: dict) -> Arch:
    """Architecture of a (Qwen2/Llama-like) model from its config.json."""
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_dim = config.get("num_key_value_heads", heads) * head_dim
    vocab = config["vocab_size"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter + 2 * hidden
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return Arch(float(embed + layers * per_layer), hidden, inter, layers, kv_dim, vocab)


def model_arch(model_name_or_path: str) -> Arch | None:
    """From a local model's config.json, or from the size in a known hub id; else None."""
    config = Path(os.path.expanduser(model_name_or_path)) / "config.json"
    if config.is_file():
        return arch_from_config(json.loads(config.read_text(encoding="utf-8")))
    match = QWEN25_NAME.search(model_name_or_path)
    return QWEN25.get(match.group(1)) if match else None


LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_params(arch: Arch, rank: int, target: str = "all") -> float:
    """Trainable LoRA parameters: rank * (in + out) per wrapped linear layer, in every block."""
    h, i, kv = arch.hidden, arch.intermediate, arch.kv_dim
    dims = {
        "q_proj": h + h,
        "k_proj": h + kv,
        "v_proj": h + kv,
        "o_proj": h + h,
        "gate_proj": h + i,
        "up_proj": h + i,
        "down_proj": i + h,
    }
    wanted = (
        LORA_MODULES
        if target.strip() == "all"
        else [name.strip() for name in target.split(",") if name.strip() in dims]
    )
    return float(rank * arch.layers * sum(dims[name] for name in wanted))


@dataclass
class Memory:
    """GPU memory of one training process (one GPU), in GB (1e9 bytes), by part as the guide
    lists them; with several GPUs, after ZeRO's sharding (`gpus`, `zero`)."""

    weights: float
    lora: float
    optimizer: float
    activations: float
    overhead: float
    gpus: int = 1
    zero: str = ""  # "ZeRO-3", "ZeRO-2 + optimizer offload", ... ; "" without DeepSpeed

    @property
    def total(self) -> float:
        return self.weights + self.lora + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        text = (
            f"~{self.total:.0f} GB (weights {self.weights:.1f}, LoRA {self.lora:.1f}, "
            f"optimizer {self.optimizer:.1f}, activations {self.activations:.1f}, "
            f"CUDA {self.overhead:.1f})"
        )
        if self.gpus > 1 or self.zero:
            text += f" per GPU, {self.zero or 'no sharding (DDP)'} over {self.gpus} GPU" + (
                "s" if self.gpus > 1 else ""
            )
        return text


@dataclass(frozen=True)
class Zero:
    """What a DeepSpeed config shards (its zero_optimization): stage 2 shards the optimizer
    states and gradients across the GPUs, stage 3 the parameters too; an offload keeps them in
    CPU memory instead."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False

    def describe(self) -> str:
        if not self.stage:
            return ""
        off = [
            name
            for name, on in (("optimizer", self.offload_optimizer), ("parameter", self.offload_param))
            if on
        ]
        return f"ZeRO-{self.stage}" + (f" + {' and '.join(off)} offload" if off else "")


def zero_config(args: dict) -> Zero:
    """The ZeRO settings of the run's DeepSpeed config (train.yaml's `deepspeed`), if any."""
    path = deepspeed_file(args)
    if path is None or not path.is_file():
        return Zero()
    zero = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization") or {}

    def offloaded(key: str) -> bool:
        return (zero.get(key) or {}).get("device", "none") not in ("none", None)

    return Zero(int(zero.get("stage", 0) or 0), offloaded("offload_optimizer"), offloaded("offload_param"))


def weight_bits(args: dict) -> int:
    if args.get("quantization_bit"):
        return int(args["quantization_bit"])
    return 16 if args.get("bf16") or args.get("fp16") or args.get("pure_bf16") else 32


def estimate_memory(arch: Arch, args: dict, gpus: int = 1) -> Memory:
    """Peak memory of one GPU in a LoRA run on `gpus` GPUs, calibrated on the guide's 32B figures.

    weights     parameters * bits / 8, plus 5 % for quantisation constants and norms
    LoRA        trainable parameters in fp32 (4 bytes)
    optimizer   their fp32 gradients and Adam's two moments (12 bytes)
    activations per token and block: the bf16 inputs of the attention and SwiGLU projections
                (2 * (5 h + 2 kv + 4 i) bytes) and fp32 norms (8 h), plus fp32 logits and their
                gradient (8 * vocab); times batch * cutoff_len. With the guide's settings
                (gradient checkpointing on) this reproduces its measured 40-50 GB.
    CUDA        context and allocator slack, 1.5 GB

    On several GPUs each holds its own batch's activations; what the run's DeepSpeed config
    shards is divided among them: ZeRO-2 the optimizer part (gradients and Adam's moments),
    ZeRO-3 also the weights and the LoRA parameters, plus the two blocks it gathers at a time
    (the one computing and the one prefetched). An offload moves its part to CPU memory: the
    optimizer's leaves the GPU; the parameters' leaves only those two gathered blocks. Plain
    DDP (no DeepSpeed) keeps a whole copy on every GPU.
    """
    rank = int(setting(args, "lora_rank"))
    trainable = lora_params(arch, rank, str(args.get("lora_target", "all")))
    tokens = int(args.get("per_device_train_batch_size", 1)) * int(setting(args, "cutoff_len"))
    h, i, kv = arch.hidden, arch.intermediate, arch.kv_dim
    per_token = arch.layers * (2 * (5 * h + 2 * kv + 4 * i) + 8 * h) + 8 * arch.vocab
    weights = arch.params * weight_bits(args) / 8 * 1.05 / GB
    lora, optimizer = trainable * 4 / GB, trainable * 12 / GB
    gpus = max(int(gpus), 1)
    zero = zero_config(args)
    if zero.stage >= 2:
        optimizer = 0.0 if zero.offload_optimizer else optimizer / gpus
    if zero.stage >= 3:
        gathered = 2 * weights / arch.layers
        weights = gathered if zero.offload_param else weights / gpus + gathered
        lora /= gpus
    return Memory(
        weights=weights,
        lora=lora,
        optimizer=optimizer,
        activations=tokens * per_token / GB,
        overhead=1.5,
        gpus=gpus,
        zero=zero.describe(),
    )


def planned_steps(args: dict, examples: int, devices: int = 1) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over the training split."""
    if int(args.get("max_steps", -1) or -1) > 0:
        return int(args["max_steps"])
    val = float(args.get("val_size", 0) or 0)
    train = examples - (int(val) if val >= 1 else math.ceil(examples * val))
    per_step = (
        int(args.get("per_device_train_batch_size", 1))
        * int(args.get("gradient_accumulation_steps", 1))
        * max(devices, 1)
    )
    return math.ceil(float(args.get("num_train_epochs", 3.0)) * math.ceil(max(train, 1) / per_step))


def save_interval(args: dict, steps: int) -> int:
    """Steps between checkpoints. A save_steps below 1 is a fraction of the run's steps (0.1:
    every tenth of the run), rounded up as transformers' TrainerState.compute_steps does."""
    value = float(args.get("save_steps", 500) or 500)
    if value < 1:
        return max(1, math.ceil(steps * value))
    return int(value)


def estimate_disk(arch: Arch | None, args: dict, steps: int) -> float:
    """GB the run folder needs: every checkpoint (adapter + fp32 Adam state) and the final adapter."""
    if arch is None:
        return 1.0
    trainable = lora_params(arch, int(setting(args, "lora_rank")), str(args.get("lora_target", "all")))
    checkpoints = (
        max(1, steps // save_interval(args, steps)) if args.get("save_strategy", "steps") != "no" else 0
    )
    per_checkpoint = trainable * (4 + 8) / GB + 0.02
    return checkpoints * per_checkpoint + trainable * 4 / GB + 0.1


CUDA_KEYS = ("quantization_bit", "bf16", "fp16", "pure_bf16")


def needs_cuda(args: dict) -> list[str]:
    """The profile's keys that only work on an NVIDIA GPU."""
    return [f"{key}: {args[key]}" for key in CUDA_KEYS if args.get(key)]
