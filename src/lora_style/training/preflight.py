"""Check a pod before any GPU time is spent, and (opt-in) bring a fresh pod to that state.

Preflight asks the pod, in one connection (probe.sh): does it answer; does ``llamafactory-cli``
run, and which version; which GPUs (``nvidia-smi``) with how much free memory; do the packages
the run's arguments need beyond LLaMA-Factory import, at a version LLaMA-Factory accepts
(``bitsandbytes`` when the profile quantises, ``deepspeed`` when it names a DeepSpeed config: what
LLaMA-Factory itself checks only once training has started); how much disk the run folder has; is rsync
there, and does the login shell print nothing of its own (the ssh executor's file transfers need
both). The answers are compared with what the run
needs (estimate.py). Every failure says what is wrong and what to change; nothing is uploaded or
launched until all checks pass.

Setup (``setup: true`` on a pod) does by hand-free what the guide's step 1 does by hand: tmux (and
rsync for the ssh executor), LLaMA-Factory and the packages of the guide's
``metrics,bitsandbytes,qwen`` extras (named one by one: LLaMA-Factory 0.9.5 declares no extras,
so pip would install it without them), and the run's own packages (deepspeed). It only installs
what is missing, so it is safe to run on every launch, and records what it did on the pod
(setup.sh).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from .estimate import (
    GB,
    Memory,
    estimate_disk,
    estimate_memory,
    model_arch,
    needs_cuda,
    planned_steps,
    zero_config,
)
from .executor import Executor
from .messages import PodError, Say, Unreachable
from .processes import check_gpus, world_size
from .settings import PodSettings
from .shell import first

# The packages of the guide's `pip install -e ".[metrics,bitsandbytes,qwen]"` (extras metrics,
# bitsandbytes and qwen), by name: the module setup probes for -> what pip installs.
SETUP_MODULES = {
    "nltk": "nltk",
    "jieba": "jieba",
    "rouge_chinese": "rouge-chinese",
    "bitsandbytes": "bitsandbytes>=0.39.0",
    "transformers_stream_generator": "transformers_stream_generator",
}
TEMPLATE_DIR = "/workspace/LLaMA-Factory"  # where RunPod's LLaMA-Factory template keeps it
LLAMAFACTORY_VERSION = "0.9.5"  # what requirements/pod.txt and the tests use
DEEPSPEED = "deepspeed>=0.10.0,<=0.16.9"  # LLaMA-Factory 0.9.5's requirements/deepspeed.txt


@dataclass(frozen=True)
class Need:
    """A package the run's arguments need beyond LLaMA-Factory's own dependencies."""

    module: str
    requirement: str  # pip's form: what setup installs and the fix names
    why: str


def run_packages(args: dict) -> list[Need]:
    """What LLaMA-Factory 0.9.5 requires for these arguments but checks only once the training has
    started (hparams/parser.py, model/model_utils/quantization.py): on a GPU pod, after minutes of
    paid start-up."""
    needs = []
    bits = args.get("quantization_bit")
    if bits and str(args.get("quantization_method") or "bnb") in ("bnb", "bitsandbytes"):
        zero3 = zero_config(args).stage == 3  # QLoRA under ZeRO-3 needs 4-bit storage in bf16
        minimum = "0.43.0" if zero3 else "0.39.0" if int(bits) == 4 else "0.37.0"
        needs.append(
            Need(
                "bitsandbytes",
                f"bitsandbytes>={minimum}",
                f"quantization_bit: {bits}" + (" under DeepSpeed ZeRO-3" if zero3 else ""),
            )
        )
    if args.get("deepspeed"):
        needs.append(Need("deepspeed", DEEPSPEED, f"deepspeed: {args['deepspeed']}"))
    return needs


def imported(facts: dict) -> dict[str, tuple[str, str]]:
    """probe.sh's `@@import MODULE RC LINE` answers: module -> (rc, version or error)."""
    found = {}
    for value in facts.get("import", []):
        module, rc, said = (value.split(" ", 2) + ["", ""])[:3]
        found[module] = (rc, said)
    return found


def unmet(need: Need, found: dict[str, tuple[str, str]]) -> str:
    """Why the pod's package does not meet the need; "" when it does."""
    rc, said = found.get(need.module, ("", ""))
    if rc != "0":
        return f"does not import ({said or 'no python found for llamafactory-cli'})"
    try:
        if Version(said) not in Requirement(need.requirement).specifier:
            return f"is version {said}"
    except InvalidVersion:  # a build without a plain version: LLaMA-Factory decides
        pass
    return ""


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
            "remote_dir": self.remote_dir,
            "llamafactory_cli": self.cli_path,
            "llamafactory_version": self.llamafactory_version,
            "gpus": self.gpus,
            "memory_estimate_gb": round(self.memory.total, 1) if self.memory else None,
            "detach": self.detach,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def parse_gpus(lines: list[str]) -> list[dict]:
    gpus = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            gpus.append(
                {
                    "index": parts[0],
                    "name": parts[1],
                    "total_gb": int(parts[2]) * 2**20 / GB,
                    "free_gb": int(parts[3]) * 2**20 / GB,
                }
            )
    return gpus


def shell_noise(text: str) -> str:
    """What the pod's login shell printed on its own before probe.sh's first line (a ~/.bashrc
    that echoes a banner or activates an environment aloud)."""
    before, found, _ = text.partition("\n@@ok\n")
    return before.strip() if found else ""


def evaluate(
    facts: dict,
    args: dict,
    pod: str,
    examples: int,
    needs_rsync: bool = False,
    settings: PodSettings | None = None,
    shell_output: str = "",
) -> Report:
    """Turn the pod's facts into checks against what the run's profile needs.

    needs_rsync: the ssh executor copies files with rsync, which must exist at both ends.
    settings: the pod's, for the number of GPUs (processes) the run trains on.
    shell_output: what the login shell printed before the probe ran (shell_noise)."""
    settings = settings or PodSettings()
    report = Report()
    world = world_size(settings)
    at = f"pods.{pod}"
    # llamafactory-cli
    cli = first(facts, "cli")
    if not cli:
        report.checks.append(
            Check(
                "llamafactory-cli",
                False,
                "not found on the pod (a non-interactive ssh shell's PATH)",
                f"set {at}.llamafactory_cli to its full path there (`which llamafactory-cli` on the pod), "
                f"or set {at}.setup: true to install LLaMA-Factory",
            )
        )
    elif first(facts, "cli_rc") != "0":
        tail = " | ".join(facts.get("cli_out", [])[-4:])
        report.checks.append(
            Check(
                "llamafactory-cli",
                False,
                f"{cli} version failed ({first(facts, 'cli_rc')}): {tail}",
                f"repair the pod's LLaMA-Factory environment, or set {at}.setup: true",
            )
        )
    else:
        report.cli_path = cli
        report.llamafactory_version = first(facts, "version", "unknown")
        report.checks.append(
            Check("llamafactory-cli", True, f"{cli}, LLaMA-Factory {report.llamafactory_version}")
        )
    # GPU and memory
    cuda = needs_cuda(args)
    report.gpus = parse_gpus(facts.get("gpu", []))
    arch = model_arch(str(args.get("model_name_or_path", "")))
    report.memory = estimate_memory(arch, args, world) if arch else None
    if not report.gpus:
        why = (
            "nvidia-smi not found"
            if "nvidia_smi_rc" not in facts
            else f"nvidia-smi failed: {' | '.join(facts.get('gpu', []))[:300]}"
        )
        if cuda:
            report.checks.append(
                Check(
                    "GPU",
                    False,
                    f"no NVIDIA GPU ({why}), but the profile sets {', '.join(cuda)}, which need CUDA",
                    "rent a GPU pod (the guide: A100 SXM 80GB for Qwen2.5-32B in 4 bits), or for a CPU "
                    "test run use a profile without quantization_bit and bf16 (tiny_cpu)",
                )
            )
        else:
            report.checks.append(Check("GPU", True, f"none ({why}): CPU training, the profile needs no CUDA"))
    else:
        best = max(report.gpus, key=lambda g: g["free_gb"])
        seen = f"{len(report.gpus)} x {best['name']}, best {best['free_gb']:.0f} of {best['total_gb']:.0f} GB free"
        if world > 1:  # every process needs its share: the fullest of the GPUs it trains on
            best = min(report.gpus[:world], key=lambda g: g["free_gb"])
            seen = (
                f"{len(report.gpus)} x {best['name']}, the {world} it trains on have at least "
                f"{best['free_gb']:.0f} of {best['total_gb']:.0f} GB free"
            )
        if report.memory is None:
            report.checks.append(
                Check(
                    "GPU",
                    True,
                    f"{seen}; memory not estimated (unknown size of {args.get('model_name_or_path')})",
                )
            )
        elif report.memory.total > best["free_gb"]:
            report.checks.append(
                Check(
                    "GPU memory",
                    False,
                    f"{seen}; the run needs {report.memory.describe()}",
                    "rent a larger GPU (A100/H100 80GB), or lower lora_rank, cutoff_len or "
                    "per_device_train_batch_size in the run's overrides, or use a smaller base "
                    "(profile qwen25_14b: the guide's advice for smaller GPUs)",
                )
            )
        else:
            report.checks.append(
                Check("GPU memory", True, f"{seen}; the run needs {report.memory.describe()}")
            )
    count = check_gpus(len(report.gpus), settings, args, cli or "", pod)
    if count is not None:
        report.checks.append(Check("GPUs", count.ok, count.detail, count.fix))
    # bitsandbytes, deepspeed: asked of llamafactory-cli's own python
    found = imported(facts)
    for need in run_packages(args) if cli else ():
        problem = unmet(need, found)
        report.checks.append(
            Check(need.module, True, f"version {found[need.module][1]}")
            if not problem
            else Check(
                need.module,
                False,
                f"{problem}, but {need.why} needs {need.requirement}",
                f"`pip install '{need.requirement}'` on the pod, or set {at}.setup: true",
            )
        )
    # disk
    if "dir_error" in facts or "dir" not in facts:
        report.checks.append(
            Check(
                "run folder",
                False,
                "cannot create or enter remote_dir there",
                f"set {at}.remote_dir to a writable folder (RunPod: below /workspace)",
            )
        )
    else:
        report.remote_dir = first(facts, "dir")
        free = int(first(facts, "disk_free_kb", "0") or 0) * 1024 / GB
        need = estimate_disk(arch, args, planned_steps(args, examples, world))
        check = Check(
            "disk",
            free >= need,
            f"{report.remote_dir}: {free:.1f} GB free, checkpoints need ~{need:.1f} GB",
            "free space on the pod's volume, enlarge it, or raise save_steps",
        )
        report.checks.append(check)
    # rsync (the ssh executor's uploads and downloads run `rsync --server` on the pod)
    if needs_rsync:
        if "rsync" in facts:
            report.checks.append(Check("rsync", True, "found"))
        else:
            report.checks.append(
                Check(
                    "rsync",
                    False,
                    "not found on the pod (a non-interactive ssh shell's PATH); "
                    "the upload of the run's files needs it",
                    f"apt-get install -y rsync on the pod, or set {at}.setup: true",
                )
            )
        # rsync speaks its protocol over the ssh command's stdout: a shell that prints first
        # breaks it ("protocol version mismatch -- is your shell clean?"), after the upload began.
        if shell_output:
            report.checks.append(
                Check(
                    "quiet shell",
                    False,
                    f"the pod's shell prints {shell_output.splitlines()[0][:120]!r} before every command "
                    "(its ~/.bashrc, ~/.profile or /etc/bash.bashrc); rsync's uploads and downloads "
                    "cannot pass through that",
                    "make it print only in an interactive shell (first line of ~/.bashrc: "
                    "`case $- in *i*) ;; *) return ;; esac`), or print to stderr (`>&2`)",
                )
            )
    report.detach = "tmux" if "tmux" in facts else ("setsid nohup" if "setsid" in facts else "nohup")
    return report


def failure_message(report: Report, where: str) -> str:
    lines = [f"preflight failed on {where}; nothing was uploaded or launched:"]
    for check in report.failures:
        lines.append(f"  - {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"    fix: {check.fix}")
    return "\n".join(lines)


def probe(ex: Executor, remote_dir: str, cli: str, needs: Sequence[Need] = (), for_setup: bool = False):
    """Run probe.sh there; its Result, whose .facts are the pod's `@@key value` answers."""
    return ex.run(
        "probe.sh",
        remote_dir,
        cli,
        " ".join(need.module for need in needs),
        int(for_setup),
        TEMPLATE_DIR,
        *(SETUP_MODULES if for_setup else ()),
        timeout=300,
    )


def run_preflight(ex: Executor, settings: PodSettings, args: dict, examples: int, say: Say) -> Report:
    """All checks in one connection; raises PodError (with every failure and its fix) or returns.

    args: the run's training arguments (train.yaml); examples: lines of its data."""
    try:
        result = probe(ex, settings.remote_dir, settings.llamafactory_cli, run_packages(args))
    except Unreachable as exc:
        raise PodError(f"preflight failed; nothing was uploaded or launched: {exc}") from None
    facts = result.facts
    if "ok" not in facts:
        raise PodError(
            f"preflight failed on {ex.where()}: the login shell did not run the probe "
            f"(exit {result.rc}): {result.err.strip()[-500:]}"
        )
    report = evaluate(
        facts,
        args,
        ex.name,
        examples,
        needs_rsync=ex.transport.kind == "ssh",
        settings=settings,
        shell_output=shell_noise(result.text),
    )
    ex.scheduler_checks(report, args)  # Slurm: its partition and GPUs instead of the login node's
    for check in report.checks:
        say(f"preflight: {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.failures:
        raise PodError(failure_message(report, ex.where()))
    return report
