"""What the user is told on the training side: the errors, what an interruption means, the
guide's troubleshooting hints, and the progress line."""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager

from lora_style.fileio import UserError


class PodError(UserError):
    """A problem with the pod, worded as what is wrong and what to change."""


class Unreachable(PodError):
    """The pod did not answer. Maybe transient: a following loop retries, a launch does not."""

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short or message  # for a retry line: what ssh said, without the advice


class TrainingFailed(PodError):
    """The remote training ended without finishing."""


class Say:
    """Messages for the user, on stderr: Snakemake shows them, and the rule's log keeps them
    (scripts/logged.sh)."""

    def __init__(self, run: str):
        self.run = run

    def __call__(self, message: str) -> None:
        for line in message.splitlines() or [""]:
            print(f"[{self.run}] {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ interruptions


class Stopped(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) at a point that has a message of its own: str() is that message."""


@contextmanager
def stopped_as(message: str):
    """Within the block, an interruption says `message` (an inner block's message wins)."""
    try:
        yield
    except Stopped:
        raise
    except KeyboardInterrupt:
        raise Stopped(message) from None


# What an interruption means: by the step it cut (stopped_as), else by command (remote_train).
BEFORE_LAUNCH = (
    "stopped before the launch; nothing was launched on the pod. Run snakemake again "
    "to launch the training (or attach to it)"
)
LAUNCH_CUT = (
    "stopped during the launch, which may be incomplete on the pod. Run snakemake again: "
    "it re-attaches to the training if it started, else launches it"
)
STOPPED = {
    "preflight": "stopped; nothing was uploaded or launched",
    "submit": BEFORE_LAUNCH,
    "wait": "stopped following; the training goes on on the pod. Run snakemake again to re-attach",
    "fetch": "download stopped; nothing landed. Run snakemake again: it fetches again",
}


def stopped_after_landing(adapter_dir) -> str:
    return (
        f"stopped after {adapter_dir} landed, before the run's summary, plot and trainer state "
        f"were written. Run snakemake again: it fetches again (by hand: remove {adapter_dir} "
        "first)"
    )


# ------------------------------------------------------------------------------ hints

# The guide's troubleshooting table, matched against the end of the remote log.
HINTS = [
    (
        r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED",
        "CUDA OOM: reduce per_device_train_batch_size to 1 and increase gradient_accumulation_steps "
        "(or lower cutoff_len / lora_rank) in runs.{run}.overrides; a changed train.yaml starts a new run",
    ),
    (
        r"No module named '?bitsandbytes|bitsandbytes\S* is required|(Error|error).{0,80}bitsandbytes",
        "missing bitsandbytes: `pip install bitsandbytes>=0.39.0` on the pod, or set pods.{pod}.setup: true",
    ),
    (
        r"Undefined dataset|Cannot open \S*dataset_info|File \S+ not found",
        "dataset not found: `dataset` must match a key in dataset_info.json. Both are generated from "
        "the run's name here, so the run folder on the pod is incomplete or was edited: delete "
        "results/{run}/train/launch.json and run again to upload it anew",
    ),
]


def resume_point(state) -> str:
    return f"checkpoint-{state.checkpoint}" if state.checkpoint else "step 0 (no checkpoint was saved yet)"


# Less free than this on the run folder's disk, and a training that ended there ran out of it.
DISK_FULL_KB = 64 * 1024


def disk_full(log_tail: str, state) -> bool:
    """The training ended on a full disk. The log may not say so: a full disk cannot take the
    traceback either, so the free space the pod reports decides as well."""
    return bool(re.search(r"No space left on device|Errno 28|ENOSPC", log_tail)) or (
        state.free_kb is not None and state.free_kb < DISK_FULL_KB
    )


def disk_full_hint(state, run: str) -> str:
    free = f"{state.free_kb / 1024:.0f} MB" if state.free_kb is not None else "no room"
    return (
        f"the pod's disk is full ({free} free in {state.remote_dir}). Free space there (old run "
        f"folders keep every checkpoint: `du -sh {state.remote_dir}/*`, then remove the ones you "
        "are done with) or give the pod a larger volume; then "
        f"`snakemake --forcerun submit_training {run}_mlx` resumes from {resume_point(state)}"
    )


def killed_again_hint(state, run: str, start: int) -> str:
    """A training killed (SIGKILL) twice from the same point: resuming again would only repeat it."""
    at = f"checkpoint-{start}" if start else "step 0"
    return (
        f"the training was killed (SIGKILL) twice, both times after starting from {at}: most "
        "likely the kernel's OOM killer, the pod's RAM running out, and resuming again would "
        "do the same, so it is not resumed automatically. Give it less to hold: lower "
        "per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch) or "
        "cutoff_len, set gradient_checkpointing: true, lower preprocessing_num_workers, in "
        f"runs.{run}.overrides (a changed train.yaml starts a new run), or rent a pod with more "
        "RAM. To resume this one unchanged anyway: "
        f"`snakemake --forcerun submit_training {run}_mlx`"
    )


def killed_twice(attempts: list[dict]) -> int | None:
    """The step both of the last two attempts started from when both were SIGKILLed (exit 137,
    as the OOM killer leaves it), else None."""
    last = attempts[-2:]
    if (
        len(last) == 2
        and all(a.get("rc") == 137 for a in last)
        and last[0]["from_step"] == last[1]["from_step"]
    ):
        return last[1]["from_step"]
    return None


def hint_for(log_tail: str, state, run: str, pod: str, attempts: list[dict] | None = None) -> str:
    """What to do after a training ended without finishing (state: a run_state.RunState;
    attempts: attempts.log, parsed)."""
    if disk_full(log_tail, state):
        return disk_full_hint(state, run)
    for pattern, hint in HINTS:
        if re.search(pattern, log_tail):
            return hint.format(run=run, pod=pod)
    if state.status in ("killed", "died"):
        again = killed_twice(attempts or [])
        if again is not None:
            return killed_again_hint(state, run, again)
        if getattr(state, "slurm", "") and state.slurm not in ("GONE", "COMPLETED", "FAILED"):
            cause = f"Slurm ended job {state.job}: {state.slurm}"
        elif state.rc in ("137", ""):
            cause = "the kernel's OOM killer (the pod ran out of RAM), a manual kill, or the pod stopping"
        else:
            cause = "a signal"
        return (
            f"the process was stopped from outside ({cause}); the next `snakemake` call resumes "
            f"from {resume_point(state)}"
        )
    return (
        "see the log above. Fix the config: a changed train.yaml or data starts a new run in a "
        "folder of its own. To retry this one unchanged (a download that failed, say), run "
        "snakemake with --forcerun submit_training"
    )


def gone_message(where: str, run_id: str, run: str, estimate: dict | None) -> str:
    """A run folder missing from the pod at wait: what training it again costs, and how to ask."""
    est = estimate or {}
    if est.get("gpu_hours") is not None:
        cost = f"~{est['gpu_hours']:.2g} GPU-hours"
        cost += f", ~${est['usd']:.2f}" if est.get("usd") is not None else " (no price set)"
        cost = f"{est.get('steps', '?')} steps, {cost} (the plan's estimate)"
    elif est.get("steps"):
        cost = f"{est['steps']} steps (no measured rate for this profile and GPU: no time or cost estimate)"
    else:
        cost = "the whole training again"
    return (
        f"{where} has no folder {run_id} (a new pod, or its volume was wiped): its checkpoints "
        f"are gone, so training it again starts from step 0 and costs {cost}. Nothing was "
        f"launched. To train it again: `snakemake --config relaunch={run} {run}_mlx`; "
        "or, if the run's folder is on another pod, point the config there"
    )


def format_progress(entry: dict, loss: float | None, eval_loss: float | None, width: int = 24) -> str:
    """One line from a trainer_log.jsonl entry: step, bar, losses, elapsed and remaining time."""
    step, total = entry.get("current_steps", 0), entry.get("total_steps", 0) or 1
    done = min(max(step / total, 0.0), 1.0)
    bar = "#" * round(done * width) + "-" * (width - round(done * width))
    parts = [f"step {step}/{total} [{bar}] {done * 100:5.1f}%"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if eval_loss is not None:
        parts.append(f"eval_loss {eval_loss:.4f}")
    if entry.get("elapsed_time"):
        parts.append(f"elapsed {entry['elapsed_time']}")
    if entry.get("remaining_time"):
        parts.append(f"remaining {entry['remaining_time']}")
    return "  ".join(parts)


def format_projection(projection: dict, patience: int | None = None) -> str:
    """`projected: done in ~1 h 20 min (~14:05 UTC), ~$13.40 in all`"""
    remaining = projection.get("remaining_s")
    if remaining is None:
        return ""
    finish = time.strftime("%H:%M UTC", time.gmtime(time.time() + remaining))
    text = f"projected: done in ~{_span(remaining)} (~{finish})"
    if projection.get("usd") is not None:
        text += f", ~${projection['usd']:.2f} in all"
    if patience:
        text += " at most (early stopping may end it sooner)"
    return text


def budget_cut_line(projection: dict, total: int, limits: dict) -> str:
    """`limits`: the pod's budgets that are set, {"max_usd": 40, ...}."""
    said = ", ".join(f"{key} {value}" for key, value in limits.items())
    return (
        f"at this rate the budget ({said}) stops the training at about step "
        f"{projection['cut_step']} of {total}, before max_steps; the best checkpoint saved until "
        "then is fetched (raise the budget, or lower max_steps, to plan for it)"
    )


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
