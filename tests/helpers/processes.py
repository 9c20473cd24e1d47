"""A training's processes on this machine, seen from /proc: to find them, and to freeze and thaw
them (SIGSTOP, SIGCONT) so a test holds a training where it needs it instead of training thousands
of steps to have the time to act."""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def signal_below(pid: int, sig: signal.Signals) -> list[int]:
    """Send sig to every process below pid (not pid itself); the ones it reached."""
    reached = []
    for each in descendants(pid):
        try:
            os.kill(each, sig)
            reached.append(each)
        except ProcessLookupError:
            pass
    return reached


def state_of(pid: int) -> str:
    """A process's state letter (R, S, T for stopped, ...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def freeze(run_dir: Path) -> list[int]:
    """Pause a run folder's training: every process below its run.sh (named in its `pid` file)
    holds its step and uses no CPU, and is still alive to whatever checks on it.

    run.sh itself is left running (it only waits for its trainer): under tmux it is the pane's
    process, and tmux sends SIGCONT to the pane's whole process group, the trainer included, as
    soon as that process stops. Fails unless every process is still stopped a moment later."""
    stopped = signal_below(int((run_dir / "pid").read_text()), signal.SIGSTOP)
    assert stopped, f"nothing to freeze under {run_dir}/pid"

    def held() -> bool:
        return all(state_of(pid) in ("T", "t", "Z", "X", "") for pid in stopped)  # stopped, or gone

    wait_until(held, 10, f"the training under {run_dir.name} to stop")
    time.sleep(0.3)  # where something resumes a stopped process (tmux does), it has by now
    assert held(), f"the training under {run_dir.name} was resumed as soon as it was frozen"
    return stopped


def thaw(run_dir: Path) -> list[int]:
    """Let a frozen training go on."""
    return signal_below(int((run_dir / "pid").read_text()), signal.SIGCONT)


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
