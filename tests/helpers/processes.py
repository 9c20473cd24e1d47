"""A training's processes on this machine, seen from /proc: to find them, and to freeze and thaw
them (SIGSTOP, SIGCONT) so a test holds a training where it needs it instead of training thousands
of steps to have the time to act."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from helpers.workflow import wait_until


def process_tree(pid: int) -> list[int]:
    """pid and every process below it (torchrun's workers run in sessions of their own, so a
    process group does not hold them all)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def descendants(pid: int) -> list[int]:
    """The processes below pid (the trainer under run.sh)."""
    return process_tree(pid)[1:]


def signal_tree(pid: int, sig: signal.Signals) -> list[int]:
    """Send sig to pid and every process below it; the ones it reached."""
    reached = []
    for each in process_tree(pid):
        try:
            os.kill(each, sig)
            reached.append(each)
        except ProcessLookupError:
            pass
    return reached


def freeze(run_dir: Path) -> list[int]:
    """Pause a run folder's attempt (run.sh, named in its `pid` file, and all below it): the
    training holds its step and uses no CPU, and is still alive to whatever checks on it."""
    return signal_tree(int((run_dir / "pid").read_text()), signal.SIGSTOP)


def thaw(run_dir: Path) -> list[int]:
    """Let a frozen attempt go on."""
    return signal_tree(int((run_dir / "pid").read_text()), signal.SIGCONT)


def first_checkpoint(runs: Path, proc: subprocess.Popen | None = None, timeout: float = 300) -> Path:
    """Wait for a run folder under `runs` to hold a complete checkpoint; that run folder. Fails
    if `proc` (the snakemake that trains it) ends first."""

    def found() -> Path | None:
        states = list(runs.glob("*/output/checkpoint-*/trainer_state.json")) if runs.exists() else []
        return states[0].parents[2] if states else None

    return wait_until(found, timeout, f"a checkpoint under {runs}", proc)


def hold_until_budget_cut(run_dir: Path, timeout: float = 300) -> None:
    """Freeze the run's training until the pod's guard has cut it by its budget (`budget_cut`),
    then thaw it: the budget's clock runs on while the trainer spends no CPU, and the guard's
    SIGTERM, pending while it is stopped, ends it as soon as it goes on."""
    freeze(run_dir)
    try:
        wait_until((run_dir / "budget_cut").exists, timeout, f"the guard to cut {run_dir.name}")
    finally:
        thaw(run_dir)
