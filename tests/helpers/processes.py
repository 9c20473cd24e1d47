"""A training's processes on this machine, seen from /proc: to find them, and to freeze and thaw
them (SIGSTOP, SIGCONT) so a test holds a training where it needs it instead of training thousands
of steps to have the time to act."""

from __future__ import annotations

import os
import signal
from pathlib import Path


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
