"""What the user is told on the training side: the errors, what an interruption means, the
guide's troubleshooting hints, and the progress line."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager

from fileio import UserError


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
BEFORE_LAUNCH = ("stopped before the launch; nothing was launched on the pod. Run snakemake again "
                 "to launch the training (or attach to it)")
LAUNCH_CUT = ("stopped during the launch, which may be incomplete on the pod. Run snakemake again: "
              "it re-attaches to the training if it started, else launches it")
STOPPED = {
    "preflight": "stopped; nothing was uploaded or launched",
    "submit": BEFORE_LAUNCH,
    "wait": "stopped following; the training goes on on the pod. Run snakemake again to re-attach",
    "fetch": "download stopped; nothing landed. Run snakemake again: it fetches again",
}


def stopped_after_landing(adapter_dir) -> str:
    return (f"stopped after {adapter_dir} landed, before the run's summary, plot and trainer state "
            f"were written. Run snakemake again: it fetches again (by hand: remove {adapter_dir} "
            "first)")


# ------------------------------------------------------------------------------ hints

# The guide's troubleshooting table, matched against the end of the remote log.
HINTS = [
    (r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED",
     "CUDA OOM: reduce per_device_train_batch_size to 1 and increase gradient_accumulation_steps "
     "(or lower cutoff_len / lora_rank) in runs.{run}.overrides; a changed train.yaml starts a new run"),
    (r"No module named '?bitsandbytes|bitsandbytes\S* is required|(Error|error).{0,80}bitsandbytes",
     "missing bitsandbytes: `pip install bitsandbytes>=0.39.0` on the pod, or set pods.{pod}.setup: true"),
    (r"Undefined dataset|Cannot open \S*dataset_info|File \S+ not found",
     "dataset not found: `dataset` must match a key in dataset_info.json. Both are generated from "
     "the run's name here, so the run folder on the pod is incomplete or was edited: delete "
     "results/{run}/train/launch.json and run again to upload it anew"),
]


def hint_for(log_tail: str, state, run: str, pod: str) -> str:
    """What to do after a training ended without finishing (state: a run_state.RunState)."""
    for pattern, hint in HINTS:
        if re.search(pattern, log_tail):
            return hint.format(run=run, pod=pod)
    if state.status in ("killed", "died"):
        cause = ("the kernel's OOM killer (the pod ran out of RAM), a manual kill, or the pod stopping"
                 if state.rc in ("137", "") else "a signal")
        where = f"checkpoint-{state.checkpoint}" if state.checkpoint else "step 0 (no checkpoint was saved yet)"
        return f"the process was stopped from outside ({cause}); the next `snakemake` call resumes from {where}"
    return ("see the log above. Fix the config: a changed train.yaml or data starts a new run in a "
            "folder of its own. To retry this one unchanged (a download that failed, say), run "
            "snakemake with --forcerun submit_training")


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
