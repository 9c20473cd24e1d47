"""How many training processes a run starts on its pod, and how LLaMA-Factory is told.

LLaMA-Factory launches ``torchrun`` itself (``llamafactory/launcher.py``) when more than one GPU is
visible or ``FORCE_TORCHRUN=1``, with ``NPROC_PER_NODE`` processes (by default one per visible GPU).
The pipeline fixes the count from the pod's settings instead (``processes``, else ``gpu_count``), so
it is known before any contact (the plan's cost line counts the same GPUs), it is the same on every
attempt of a run, and a pod with more GPUs than that trains on ``gpu_count`` of them, not on a
number that depends on the machine of the day. The count travels in the run folder as
``train.env``, which run.sh reads: ``sh run.sh`` by hand on the pod trains the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import PodSettings


def world_size(settings: PodSettings) -> int:
    """Training processes: `processes` (CPU processes on a machine without GPUs, for a test of the
    distributed path), else one per GPU: a Slurm job's `gpus`, a pod's `gpu_count`."""
    return int(settings.processes or settings.gpus or settings.gpu_count or 1)


def needs_torchrun(settings: PodSettings, args: dict) -> bool:
    """Several processes, or DeepSpeed, which LLaMA-Factory refuses to start without torchrun
    ("Please use `FORCE_TORCHRUN=1` to launch DeepSpeed training"), even on one GPU."""
    return world_size(settings) > 1 or bool(args.get("deepspeed"))


def train_env(settings: PodSettings, args: dict) -> str:
    """train.env of a run folder: shell assignments run.sh exports before the training starts.

    NPROC_PER_NODE is always written: without it, a single-process run on a pod with two GPUs
    would be turned into a two-process one by LLaMA-Factory's launcher."""
    lines = [
        "# How this run trains (processes.py wrote it; run.sh exports it).",
        f"NPROC_PER_NODE={world_size(settings)}",
    ]
    if needs_torchrun(settings, args):
        lines.append("FORCE_TORCHRUN=1")
    if settings.processes:
        # CPU processes: accelerate names each one's device "cpu:0" (torch.device("cpu", index)),
        # and transformers resumes the optimizer with torch.load(map_location=that device), which
        # fails: "don't know how to restore data location of torch.storage.UntypedStorage (tagged
        # with cpu:0)". accelerate takes the device from this variable instead: plain "cpu".
        lines.append("ACCELERATE_TORCH_DEVICE=cpu")
    return "\n".join(lines) + "\n"


@dataclass
class GpuCount:
    ok: bool
    detail: str
    fix: str = ""


def check_gpus(found: int, settings: PodSettings, args: dict, cli: str, at: str) -> GpuCount | None:
    """The pod's GPUs against the processes the run starts; None when there is nothing to say
    (one process on a pod with at most one GPU)."""
    world = world_size(settings)
    torchrun = needs_torchrun(settings, args)
    if torchrun and " " in cli:
        # The launcher rebuilds its torchrun command with " ".join(...).split(): a space in the
        # path of its own installation splits that path in two.
        return GpuCount(
            False,
            f"{cli} has a space in its path; LLaMA-Factory's torchrun launch "
            "splits its command on spaces, so a distributed training cannot start",
            "install LLaMA-Factory in a folder whose path has no spaces",
        )
    if settings.executor == "slurm":
        return None  # the login node's GPUs say nothing: Slurm's checks compare `gpus` with the partition
    if settings.processes:
        if found:
            return GpuCount(
                False,
                f"pods.{at}.processes is for a machine without GPUs (CPU processes); this one has {found}",
                f"leave pods.{at}.processes out and set pods.{at}.gpu_count: {found}",
            )
        return GpuCount(True, f"{world} CPU processes (gloo) under torchrun (pods.{at}.processes: {world})")
    if found < world and world > 1:  # one process on a CPU: preflight's GPU check says it
        have = f"{found} GPU" + ("s" if found != 1 else "") if found else "no NVIDIA GPU"
        return GpuCount(
            False,
            f"the run trains on {world} GPUs (pods.{at}.gpu_count: {world}); the pod has {have}",
            f"rent a pod with {world} GPUs, or set pods.{at}.gpu_count: {found or 1} "
            "with a profile that fits",
        )
    if found > world:
        idle = found - world
        return GpuCount(
            True,
            f"trains on {world} of the pod's {found} GPUs (pods.{at}.gpu_count: "
            f"{world}); {idle} idle, still billed: set pods.{at}.gpu_count: {found} to "
            "train on all of them",
        )
    if world > 1:
        return GpuCount(True, f"{world} processes under torchrun, one per GPU")
    return None
