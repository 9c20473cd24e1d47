"""Follow a training to its end: progress lines, a mirror of the pod's train.log, reconnects
through a dropped connection, and a resume from the last checkpoint when the process died."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import cost
from .executor import Executor
from .launch import RunFiles, launch_and_record
from .messages import (
    PodError,
    Say,
    TrainingFailed,
    budget_cut_line,
    disk_full,
    disk_full_hint,
    format_progress,
    format_projection,
    gone_message,
    hint_for,
    killed_again_hint,
    killed_twice,
)
from .reconnect import with_reconnect
from .run_state import RunState, now_iso, parse_attempts, parse_state, read_state
from .settings import PodSettings
from .shell import parse_markers

POLL_CAP = 4 * 2**20  # most bytes of each log fetched per poll


def seconds(entry: dict) -> float | None:
    """LLaMA-Factory's elapsed_time ("0:01:05", "1 day, 2:00:00"), in seconds."""
    text = str(entry.get("elapsed_time") or "")
    days = 0
    if "day" in text:
        head, _, text = text.partition(",")
        days = int(head.split()[0])
    parts = text.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return days * 86400 + int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])


class Follower:
    """Polls the run folder (poll.sh): mirrors train.log, shows progress from trainer_log.jsonl."""

    def __init__(
        self,
        ex: Executor,
        run_dir: str,
        mirror: Path,
        say: Say,
        settings: PodSettings | None = None,
        patience: int | None = None,
        paid_before: tuple[float, float | None] = (0.0, None),
    ):
        self.ex, self.run_dir, self.say = ex, run_dir, say
        # The projection: the pod's price and budgets, early stopping, and the time paid before
        # this attempt's steps (ended attempts' seconds, and the open attempt's start if known).
        self.settings, self.patience = settings or PodSettings(), patience
        self.paid_before, self.open_start = paid_before
        self.first: tuple[int, float] | None = None  # this attempt's first (step, elapsed s)
        self.cut_said = False
        self.mirror = open(mirror, "wb")
        self.mirror_path = mirror
        self.log_offset = 0
        self.tlog_offset = 0
        self.tlog_rest = b""
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.last_step: int | None = None
        self.last_entry: dict | None = None
        self.waiting_for = ""  # the run holding the pod's GPU while this one waits

    def poll(self) -> tuple[RunState, bool]:
        """One round trip. Returns the state and whether a log chunk was capped (more to read)."""
        out = self.ex.run(
            "poll.sh", self.run_dir, self.log_offset, self.tlog_offset, POLL_CAP, timeout=300
        ).out
        header_end = out.find(b"\n@@chunk ")
        head = out[: header_end + 1] if header_end >= 0 else out
        facts = parse_markers(head.decode("utf-8", "replace"))
        state = parse_state(facts)
        waiting = (facts.get("waiting") or [""])[0]
        if waiting and waiting != self.waiting_for:
            self.say(
                f"waiting for the GPU: {waiting} is training on {self.ex.where()}; this run "
                "starts when it ends (one training at a time per remote_dir)"
            )
        self.waiting_for = waiting
        state.remote_dir = state.remote_dir or self.run_dir.rsplit("/", 1)[0]
        if "@@no_run_dir" in head.decode("utf-8", "replace"):
            return state, False
        rest = out[header_end + 1 :]
        capped = False
        for which in ("log", "tlog"):
            line_end = rest.find(b"\n")
            header = rest[:line_end].decode("ascii", "replace").split()
            if len(header) != 3 or header[0] != "@@chunk":
                break  # a log shrank between its size and its bytes: read it again next time
            off, n = int(header[1]), int(header[2])
            data = rest[line_end + 1 : line_end + 1 + n]
            rest = rest[line_end + 1 + n :]
            capped |= n >= POLL_CAP
            if which == "log":
                self._mirror(off, data)
            else:
                self._trainer_log(off, data)
        return state, capped

    def _mirror(self, offset: int, data: bytes) -> None:
        if offset < self.log_offset:  # the log was replaced: mirror it anew
            self.mirror.seek(0)
            self.mirror.truncate()
        self.mirror.write(data)
        self.mirror.flush()
        self.log_offset = offset + len(data)

    def _trainer_log(self, offset: int, data: bytes) -> None:
        if offset < self.tlog_offset:
            self.tlog_rest = b""
        self.tlog_offset = offset + len(data)
        lines = (self.tlog_rest + data).split(b"\n")
        self.tlog_rest = lines.pop()
        newest = projection = None
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            projection = self._project(entry)  # every entry: the attempt's first one times the rate
            if entry.get("loss") is not None:
                self.loss = entry["loss"]
            if entry.get("eval_loss") is not None:
                self.eval_loss = entry["eval_loss"]
            newest = entry
        if newest is not None and (
            newest.get("current_steps") != self.last_step or newest.get("eval_loss") is not None
        ):
            self.last_step = newest.get("current_steps")
            self.last_entry = newest
            line = format_progress(newest, self.loss, self.eval_loss)
            if projection:
                line += "  " + format_projection(projection, self.patience)
            self.say(line)
            if projection and projection["cut_step"] is not None and not self.cut_said:
                self.cut_said = True
                budgets = {"max_usd": self.settings.max_usd, "max_hours": self.settings.max_hours}
                limits = {key: value for key, value in budgets.items() if value}
                self.say(budget_cut_line(projection, newest["total_steps"], limits))

    def _project(self, entry: dict) -> dict | None:
        """The projection once this attempt's steps have timed the rate (two steps and a second
        of LLaMA-Factory's elapsed_time at least)."""
        step, total, elapsed = entry.get("current_steps"), entry.get("total_steps"), seconds(entry)
        if not step or not total or elapsed is None:
            return None
        if self.first is None or step <= self.first[0] or elapsed < self.first[1]:
            self.first = (step, elapsed)  # a new attempt (a resume) times its own rate
            return None
        done, took = step - self.first[0], elapsed - self.first[1]
        if done < 2 or took < 1:
            return None
        now_paid = time.time() - self.open_start if self.open_start else elapsed
        return cost.project(step, total, done / took, self.paid_before + now_paid, self.settings)

    def tail(self, lines: int = 30) -> str:
        self.mirror.flush()
        text = self.mirror_path.read_bytes()[-200_000:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


def read_attempts(ex: Executor, run_dir: str, settings: PodSettings, say: Say) -> list[dict]:
    return parse_attempts(
        with_reconnect(
            lambda: ex.sh('cat "$1"/attempts.log', timeout=60, args=(run_dir,)).text,
            settings,
            say,
            "reading attempts.log",
        )
    )


def paid_before(ex: Executor, run_dir: str, settings: PodSettings, say: Say) -> tuple[float, float | None]:
    """The seconds of the attempts that ended, and the start of the open one (attempts.log), for
    the projection's cost and budget; read only when the pod has a price or a budget."""
    if cost.usd_per_hour(settings) is None and cost.budget_seconds(settings) is None:
        return 0.0, None
    attempts = read_attempts(ex, run_dir, settings, say)
    ended = sum(a["end"] - a["start"] for a in attempts if a.get("end"))
    open_start = attempts[-1]["start"] if attempts and not attempts[-1].get("end") else None
    return float(ended), open_start


def refuse_to_resume(
    ex: Executor, settings: PodSettings, state: RunState, run_id: str, run: str, say: Say
) -> None:
    """Raise TrainingFailed where resuming would only fail again: a full disk, or a training
    SIGKILLed twice from the same checkpoint (the OOM killer, most likely)."""
    where = f"{run_id} on {ex.where()} is {state.describe()}"
    if disk_full("", state):
        raise TrainingFailed(f"{where}; not resumed: {disk_full_hint(state, run)}")
    if state.rc == "137":
        again = killed_twice(read_attempts(ex, f"{state.remote_dir}/{run_id}", settings, say))
        if again is not None:
            raise TrainingFailed(f"{where}; not resumed: {killed_again_hint(state, run, again)}")


def wait(
    files: RunFiles, settings: PodSettings, ex: Executor, launch_rec: dict, mirror: Path, say: Say
) -> dict:
    """Follow the run to its end; resume it first if it died since the last call."""
    run_id = launch_rec["run_id"]
    if run_id != files.run_id:
        raise PodError(
            f"{launch_rec.get('run_id')} in the launch record is not the run of these inputs "
            f"({files.run_id}); delete results/{files.run}/train/launch.json and run again"
        )
    state = with_reconnect(lambda: read_state(ex, settings.remote_dir, run_id), settings, say, "attaching")
    if state.status in ("new", "killed", "died"):
        if state.status == "new":
            # Its checkpoints are gone: the whole training again, only when the user asks for it.
            if not settings.relaunch:
                raise TrainingFailed(gone_message(ex.where(), run_id, files.run, launch_rec.get("estimate")))
            say(
                f"{ex.where()} has no folder {run_id} (a new pod, or its volume was wiped): "
                f"training it again from step 0, as asked (relaunch={files.run})"
            )
        else:
            refuse_to_resume(ex, settings, state, run_id, files.run, say)
            say(f"{run_id} is {state.describe()}: resuming")
        run_dir = launch_and_record(ex, settings, files, state, say, launch_rec)["run_dir"]
    else:
        say(f"following {run_id} on {ex.where()}: {state.describe()}")
        run_dir = f"{state.remote_dir}/{run_id}"
    follower = Follower(
        ex,
        run_dir,
        mirror,
        say,
        settings,
        files.args.get("early_stopping_steps"),
        paid_before(ex, run_dir, settings, say),
    )
    started_from, job_seen = state.checkpoint, (state.job, state.slurm)
    while True:
        state, more = with_reconnect(follower.poll, settings, say, "following the training")
        if state.alive:
            if state.job and (state.job, state.slurm) != job_seen:  # Slurm: queued -> running
                job_seen = (state.job, state.slurm)
                say(f"{run_id}: {state.describe()}")
            if not more:
                time.sleep(float(settings.poll_seconds))
            continue
        if more:
            continue
        # Slurm's time limit, a preemption or a failed node: the training goes on in a new job,
        # as long as each job gets further (a time too short for one checkpoint stops here).
        if state.stopped_by_cluster and (state.checkpoint or 0) > (started_from or 0):
            say(f"{run_id} {state.describe()}: submitting it again")
            launch_and_record(ex, settings, files, state, say, launch_rec)
            started_from = state.checkpoint
            continue
        break
    if state.status == "cut":
        say(
            f"{run_id} was stopped by its budget (max_usd / max_hours) at checkpoint-"
            f"{state.checkpoint}: the best checkpoint so far is fetched and converted"
        )
    elif state.status != "finished":
        tail = follower.tail()
        attempts = read_attempts(ex, run_dir, settings, say) if state.rc == "137" else []
        hint = hint_for(tail, state, files.run, ex.name, attempts)
        raise TrainingFailed(
            f"training of {run_id} on {ex.where()} ended without finishing: "
            f"{state.describe()}\n--- end of the remote log ({mirror}) ---\n{tail}\n---\n"
            f"hint: {hint}"
        )
    attempts = read_attempts(ex, run_dir, settings, say)
    entry = follower.last_entry or {}
    # LLaMA-Factory's early stopping ends the training (exit 0) before its total_steps.
    stopped_early = bool(
        state.status == "finished"
        and entry.get("current_steps")
        and entry.get("total_steps")
        and entry["current_steps"] < entry["total_steps"]
    )
    say(
        f"{run_id} finished: {format_progress(entry, follower.loss, follower.eval_loss)}"
        if entry
        else f"{run_id} finished"
    )
    if stopped_early:
        say(
            f"{run_id} stopped early at step {entry['current_steps']} of {entry['total_steps']}: "
            "eval_loss had stopped improving (early_stopping); the best checkpoint is fetched"
        )
    used = cost.used(attempts, settings)
    if used["usd"] is not None:
        say(
            f"{run_id} used {used['gpu_hours']:.2f} GPU-hours in {used['attempts']} attempt(s): "
            f"~${used['usd']:.2f}"
        )
    return {
        "run": files.run,
        "run_id": run_id,
        "status": state.status,
        "exit_code": 0 if state.status == "finished" else int(state.rc or 0),
        "cut_by_budget": state.status == "cut",
        "stopped_early": stopped_early,
        "run_dir": run_dir,
        "attempts": attempts,
        "wall_time_s": used["wall_seconds"],
        "gpu_time": used,
        "total_steps": entry.get("total_steps"),
        "last_checkpoint": state.checkpoint,
        "finished_at": now_iso(),
    }
