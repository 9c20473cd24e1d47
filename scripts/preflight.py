"""Check a pod before any GPU time is spent, and (opt-in) bring a fresh pod to that state.

Preflight asks the pod, in one connection: does it answer; does ``llamafactory-cli`` run, and
which version; which GPUs (``nvidia-smi``) with how much free memory; does ``bitsandbytes``
import (when the profile quantises); how much disk the run folder has; is rsync there (the ssh
executor's file transfers need it). The answers are compared with estimates for the run's profile
(``estimate_memory``, calibrated on the guide's "Memory Requirements" for Qwen2.5-32B). Every
failure says what is wrong and what to change; nothing is uploaded or launched until all checks
pass.

Setup (``setup: true`` on a pod) does by hand-free what the guide's step 1 does by hand: tmux (and
rsync for the ssh executor), and LLaMA-Factory with its ``metrics,bitsandbytes,qwen`` extras. It
only installs what is missing, so it is safe to run on every launch, and records what it did on
the pod.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

GB = 1e9

# ------------------------------------------------------------------------- memory estimate


@dataclass(frozen=True)
class Arch:
    """What the estimate needs to know about a base model."""

    params: float        # all parameters, embeddings included
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int          # num_key_value_heads * head_dim
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
        import json

        return arch_from_config(json.loads(config.read_text(encoding="utf-8")))
    match = QWEN25_NAME.search(model_name_or_path)
    return QWEN25.get(match.group(1)) if match else None


LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_params(arch: Arch, rank: int, target: str = "all") -> float:
    """Trainable LoRA parameters: rank * (in + out) per wrapped linear layer, in every block."""
    h, i, kv = arch.hidden, arch.intermediate, arch.kv_dim
    dims = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h,
            "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h}
    wanted = LORA_MODULES if target.strip() == "all" else [
        name.strip() for name in target.split(",") if name.strip() in dims]
    return float(rank * arch.layers * sum(dims[name] for name in wanted))


@dataclass
class Memory:
    """GPU memory of one training process, in GB (1e9 bytes), by part as the guide lists them."""

    weights: float
    lora: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.lora + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        return (f"~{self.total:.0f} GB (weights {self.weights:.1f}, LoRA {self.lora:.1f}, "
                f"optimizer {self.optimizer:.1f}, activations {self.activations:.1f}, "
                f"CUDA {self.overhead:.1f})")


def weight_bits(args: dict) -> int:
    if args.get("quantization_bit"):
        return int(args["quantization_bit"])
    return 16 if args.get("bf16") or args.get("fp16") or args.get("pure_bf16") else 32


def estimate_memory(arch: Arch, args: dict) -> Memory:
    """Peak GPU memory of a LoRA run, calibrated on the guide's 32B figures.

    weights     parameters * bits / 8, plus 5 % for quantisation constants and norms
    LoRA        trainable parameters in fp32 (4 bytes)
    optimizer   their fp32 gradients and Adam's two moments (12 bytes)
    activations per token and block: the bf16 inputs of the attention and SwiGLU projections
                (2 * (5 h + 2 kv + 4 i) bytes) and fp32 norms (8 h), plus fp32 logits and their
                gradient (8 * vocab); times batch * cutoff_len. With the guide's settings
                (gradient checkpointing on) this reproduces its measured 40-50 GB.
    CUDA        context and allocator slack, 1.5 GB
    """
    rank = int(args.get("lora_rank", 8))
    trainable = lora_params(arch, rank, str(args.get("lora_target", "all")))
    tokens = int(args.get("per_device_train_batch_size", 1)) * int(args.get("cutoff_len", 2048))
    h, i, kv = arch.hidden, arch.intermediate, arch.kv_dim
    per_token = arch.layers * (2 * (5 * h + 2 * kv + 4 * i) + 8 * h) + 8 * arch.vocab
    return Memory(
        weights=arch.params * weight_bits(args) / 8 * 1.05 / GB,
        lora=trainable * 4 / GB,
        optimizer=trainable * 12 / GB,
        activations=tokens * per_token / GB,
        overhead=1.5,
    )


def planned_steps(args: dict, examples: int, devices: int = 1) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over the training split."""
    if int(args.get("max_steps", -1) or -1) > 0:
        return int(args["max_steps"])
    val = float(args.get("val_size", 0) or 0)
    train = examples - (int(val) if val >= 1 else math.ceil(examples * val))
    per_step = (int(args.get("per_device_train_batch_size", 1))
                * int(args.get("gradient_accumulation_steps", 1)) * max(devices, 1))
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
    trainable = lora_params(arch, int(args.get("lora_rank", 8)), str(args.get("lora_target", "all")))
    checkpoints = (max(1, steps // save_interval(args, steps))
                   if args.get("save_strategy", "steps") != "no" else 0)
    per_checkpoint = trainable * (4 + 8) / GB + 0.02
    return checkpoints * per_checkpoint + trainable * 4 / GB + 0.1


CUDA_KEYS = ("quantization_bit", "bf16", "fp16", "pure_bf16")


def needs_cuda(args: dict) -> list[str]:
    """The profile's keys that only work on an NVIDIA GPU."""
    return [f"{key}: {args[key]}" for key in CUDA_KEYS if args.get(key)]


# ------------------------------------------------------------------------------ the probe


def expand_home(var: str, path: str) -> str:
    """Shell lines setting $var to path, a leading ~ expanded there (quoted, ~ would stay)."""
    return (f"{var}={shlex.quote(path)}\n"
            f'case ${var} in "~") {var}=$HOME ;; "~/"*) {var}="$HOME/${{{var}#"~/"}}" ;; esac\n')


SETUP_MODULES = {  # LLaMA-Factory's extras the guide installs -> the modules they provide
    "nltk": "metrics", "jieba": "metrics", "rouge_chinese": "metrics",
    "bitsandbytes": "bitsandbytes", "transformers_stream_generator": "qwen",
}
TEMPLATE_DIR = "/workspace/LLaMA-Factory"   # where RunPod's LLaMA-Factory template keeps it
LLAMAFACTORY_VERSION = "0.9.5"              # what requirements/pod.txt and the tests use


def probe_script(remote_dir: str, cli: str, check_bnb: bool, for_setup: bool = False) -> str:
    """One shell script that reports the pod's facts as `@@key value` lines."""
    modules = " ".join(SETUP_MODULES) if for_setup else ""
    return "\n".join([
        "echo @@ok",
        expand_home("dir", remote_dir).rstrip("\n"),
        f"cli={shlex.quote(cli)}",
        'p=$(command -v "$cli" 2>/dev/null) || p=""',
        'case $p in /*) ;; */*) p="$(cd "$(dirname "$p")" && pwd -P)/$(basename "$p")" ;; *) p="" ;; esac',
        'py=""',
        'if [ -n "$p" ] && [ -x "$p" ]; then',
        '  echo "@@cli $p"',
        '  py=$(head -n 1 "$p" | sed -n "s/^#![[:space:]]*//p")',
        '  echo "@@python $py"',
        '  out=$("$p" version 2>&1); rc=$?',
        '  echo "@@cli_rc $rc"',
        '  printf "%s\\n" "$out" | sed -n "s/.*[Vv]ersion[[:space:]]\\{1,\\}v\\{0,1\\}\\([0-9][0-9A-Za-z.+-]*\\).*/@@version \\1/p" | head -n 1',
        '  printf "%s\\n" "$out" | tail -n 12 | sed "s/^/@@cli_out /"',
        "fi",
        'if command -v nvidia-smi >/dev/null 2>&1; then',
        '  out=$(nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits 2>&1); rc=$?',
        '  echo "@@nvidia_smi_rc $rc"',
        '  printf "%s\\n" "$out" | sed "s/^/@@gpu /"',
        "fi",
        *([
            'if [ -n "$py" ]; then out=$($py -c "import bitsandbytes; print(bitsandbytes.__version__)" 2>&1); '
            'echo "@@bnb_rc $?"; printf "%s\\n" "$out" | tail -n 3 | sed "s/^/@@bnb /"; fi',
        ] if check_bnb else []),
        'command -v tmux >/dev/null 2>&1 && echo "@@tmux $(tmux -V 2>&1)"',
        'command -v setsid >/dev/null 2>&1 && echo "@@setsid"',
        'command -v rsync >/dev/null 2>&1 && echo "@@rsync"',
        *([
            'command -v apt-get >/dev/null 2>&1 && echo "@@apt_get"',
            f'[ -d {shlex.quote(TEMPLATE_DIR)} ] && echo "@@template_dir"',
            f'if [ -n "$py" ]; then $py -c "import importlib.util as u, sys; '
            f'print(*[m for m in sys.argv[1:] if u.find_spec(m) is None])" {modules} 2>/dev/null '
            '| sed "s/^/@@missing_modules /"; fi',
        ] if for_setup else []),
        'if mkdir -p "$dir" 2>/dev/null && cd "$dir"; then',
        '  echo "@@dir $(pwd -P)"',
        "  df -Pk . | tail -n 1 | awk '{print \"@@disk_free_kb \" $4}'",
        'else echo "@@dir_error"; fi',
    ]) + "\n"


def parse_markers(text: str) -> dict[str, list[str]]:
    facts: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        if line.startswith("@@"):
            key, _, value = line[2:].partition(" ")
            facts[key].append(value.strip())
    return facts


def first(facts: dict, key: str, default: str = "") -> str:
    return facts[key][0] if facts.get(key) else default


# ------------------------------------------------------------------------------ the checks


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    remote_dir: str = ""
    cli_path: str = ""
    llamafactory_version: str = ""
    gpus: list[dict] = field(default_factory=list)
    memory: Memory | None = None
    detach: str = ""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict:
        return {
            "remote_dir": self.remote_dir, "llamafactory_cli": self.cli_path,
            "llamafactory_version": self.llamafactory_version, "gpus": self.gpus,
            "memory_estimate_gb": round(self.memory.total, 1) if self.memory else None,
            "detach": self.detach,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def parse_gpus(lines: list[str]) -> list[dict]:
    gpus = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            gpus.append({"index": parts[0], "name": parts[1],
                         "total_gb": int(parts[2]) * 2**20 / GB, "free_gb": int(parts[3]) * 2**20 / GB})
    return gpus


def evaluate(facts: dict, args: dict, pod: str, examples: int, needs_rsync: bool = False) -> Report:
    """Turn the pod's facts into checks against what the run's profile needs.

    needs_rsync: the ssh executor copies files with rsync, which must exist at both ends."""
    report = Report()
    at = f"pods.{pod}"
    # llamafactory-cli
    cli = first(facts, "cli")
    if not cli:
        report.checks.append(Check(
            "llamafactory-cli", False, "not found on the pod (a non-interactive ssh shell's PATH)",
            f"set {at}.llamafactory_cli to its full path there (`which llamafactory-cli` on the pod), "
            f"or set {at}.setup: true to install LLaMA-Factory"))
    elif first(facts, "cli_rc") != "0":
        tail = " | ".join(facts.get("cli_out", [])[-4:])
        report.checks.append(Check(
            "llamafactory-cli", False, f"{cli} version failed ({first(facts, 'cli_rc')}): {tail}",
            f"repair the pod's LLaMA-Factory environment, or set {at}.setup: true"))
    else:
        report.cli_path = cli
        report.llamafactory_version = first(facts, "version", "unknown")
        report.checks.append(Check("llamafactory-cli", True,
                                   f"{cli}, LLaMA-Factory {report.llamafactory_version}"))
    # GPU and memory
    cuda = needs_cuda(args)
    report.gpus = parse_gpus(facts.get("gpu", []))
    arch = model_arch(str(args.get("model_name_or_path", "")))
    report.memory = estimate_memory(arch, args) if arch else None
    if not report.gpus:
        why = ("nvidia-smi not found" if "nvidia_smi_rc" not in facts
               else f"nvidia-smi failed: {' | '.join(facts.get('gpu', []))[:300]}")
        if cuda:
            report.checks.append(Check(
                "GPU", False, f"no NVIDIA GPU ({why}), but the profile sets {', '.join(cuda)}, "
                "which need CUDA",
                "rent a GPU pod (the guide: A100 SXM 80GB for Qwen2.5-32B in 4 bits), or for a CPU "
                "test run use a profile without quantization_bit and bf16 (tiny_cpu)"))
        else:
            report.checks.append(Check("GPU", True, f"none ({why}): CPU training, the profile "
                                                    "needs no CUDA"))
    else:
        best = max(report.gpus, key=lambda g: g["free_gb"])
        seen = f"{len(report.gpus)} x {best['name']}, best {best['free_gb']:.0f} of {best['total_gb']:.0f} GB free"
        if report.memory is None:
            report.checks.append(Check("GPU", True, f"{seen}; memory not estimated (unknown size of "
                                                    f"{args.get('model_name_or_path')})"))
        elif report.memory.total > best["free_gb"]:
            report.checks.append(Check(
                "GPU memory", False, f"{seen}; the run needs {report.memory.describe()}",
                "rent a larger GPU (A100/H100 80GB), or lower lora_rank, cutoff_len or "
                "per_device_train_batch_size in the run's overrides, or use a smaller base "
                "(profile qwen25_14b: the guide's advice for smaller GPUs)"))
        else:
            report.checks.append(Check("GPU memory", True, f"{seen}; the run needs {report.memory.describe()}"))
    # bitsandbytes
    if args.get("quantization_bit"):
        if first(facts, "bnb_rc") == "0":
            report.checks.append(Check("bitsandbytes", True, f"version {first(facts, 'bnb')}"))
        elif cli:
            said = " | ".join(facts.get("bnb", [])) or "no python found for llamafactory-cli"
            report.checks.append(Check(
                "bitsandbytes", False, f"does not import ({said}), but quantization_bit is "
                f"{args['quantization_bit']}",
                f"`pip install bitsandbytes>=0.39.0` on the pod, or set {at}.setup: true"))
    # disk
    if "dir_error" in facts or "dir" not in facts:
        report.checks.append(Check("run folder", False, "cannot create or enter remote_dir there",
                                   f"set {at}.remote_dir to a writable folder (RunPod: below /workspace)"))
    else:
        report.remote_dir = first(facts, "dir")
        free = int(first(facts, "disk_free_kb", "0") or 0) * 1024 / GB
        need = estimate_disk(arch, args, planned_steps(args, examples))
        check = Check("disk", free >= need, f"{report.remote_dir}: {free:.1f} GB free, checkpoints "
                      f"need ~{need:.1f} GB",
                      "free space on the pod's volume, enlarge it, or raise save_steps")
        report.checks.append(check)
    # rsync (the ssh executor's uploads and downloads run `rsync --server` on the pod)
    if needs_rsync:
        if "rsync" in facts:
            report.checks.append(Check("rsync", True, "found"))
        else:
            report.checks.append(Check(
                "rsync", False, "not found on the pod (a non-interactive ssh shell's PATH); "
                "the upload of the run's files needs it",
                f"apt-get install -y rsync on the pod, or set {at}.setup: true"))
    report.detach = "tmux" if "tmux" in facts else ("setsid nohup" if "setsid" in facts else "nohup")
    return report


def failure_message(report: Report, where: str) -> str:
    lines = [f"preflight failed on {where}; nothing was uploaded or launched:"]
    for check in report.failures:
        lines.append(f"  - {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"    fix: {check.fix}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ setup


def setup_plan(facts: dict, version: str = LLAMAFACTORY_VERSION, rsync: bool = False) -> list[dict]:
    """What a fresh pod lacks and the command that installs it; empty when nothing is missing.

    rsync: the pod needs rsync too (the ssh executor's file transfers)."""
    plan = []
    packages = [name for name in ("tmux", *(["rsync"] if rsync else [])) if name not in facts]
    if packages and "apt_get" in facts:
        plan.append({"install": " ".join(packages), "command":
                     "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                     + " ".join(packages)})
    elif "tmux" in packages:
        plan.append({"install": "tmux", "command": None,
                     "note": "no apt-get: training runs under setsid nohup instead"})
    if "rsync" in packages and "apt_get" not in facts:
        plan.append({"install": "rsync", "command": None,
                     "note": "no apt-get: install rsync on the pod by hand (the upload needs it)"})
    python = first(facts, "python")
    missing = " ".join(facts.get("missing_modules", [])).split()
    if not first(facts, "cli") or missing:
        pip = [*(shlex.split(python) if python else ["python3"]), "-m", "pip", "install", "-q"]
        if "template_dir" in facts:  # the guide's step 1, verbatim
            command = shlex.join([*pip, "-e", f"{TEMPLATE_DIR}[metrics,bitsandbytes,qwen]"])
        else:  # the PyPI wheel declares no extras: name their packages
            command = shlex.join([*pip, f"llamafactory=={version}", "nltk", "jieba", "rouge-chinese",
                                  "bitsandbytes>=0.39.0", "transformers_stream_generator"])
        plan.append({"install": "llamafactory[metrics,bitsandbytes,qwen]", "missing": missing
                     or ["llamafactory-cli"], "command": command})
    return plan


def setup_script(plan: list[dict], remote_dir: str) -> str:
    """Run the plan's commands, each logged with its exit status to the pod's setup log."""
    lines = [expand_home("dir", remote_dir).rstrip("\n"), 'mkdir -p "$dir"',
             'log="$dir/lora-pipeline-setup.log"', 'status=0',
             'echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) setup" >> "$log"']
    for number, step in enumerate(plan):
        if not step.get("command"):
            continue
        lines += [f"printf '%s\\n' {shlex.quote('$ ' + step['command'])} >> \"$log\"",
                  f"( {step['command']} ) >> \"$log\" 2>&1; rc=$?",
                  f'echo "@@step {number} $rc"',
                  'echo "exit $rc" >> "$log"; [ $rc = 0 ] || status=1']
    lines.append("exit $status")
    return "\n".join(lines) + "\n"
