"""The state of a run folder on the pod, read by state.sh / poll.sh (lib.sh's run_state).

A run folder, ``<remote_dir>/<run>-<hash>/``, holds:

    train.yaml  data/{train.jsonl,dataset_info.json}  run.json   what was uploaded
    run.sh          one training attempt; resumes from the newest complete checkpoint
    pid             the attempt's shell; alive = training runs
    exit_code       written when an attempt ends; 0 = finished
    attempts.log    `start <epoch> <from-step>` / `end <epoch> <rc>` per attempt
    train.log       LLaMA-Factory's output, all attempts
    output/         LLaMA-Factory's output_dir: checkpoint-N/, trainer_log.jsonl, trainer_state.json
    launch.json     the launch record, for a rerun that attaches
"""

from __future__ import annotations

import json
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .executor import Executor
from .messages import PodError, Unreachable
from .shell import first


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Slurm job states that end a training from outside: a time limit, preemption, a node failure,
# scancel. The first ones are the cluster's doing, and wait resubmits the job on its own; after
# a person's scancel the next call resumes it.
SLURM_REQUEUE = ("TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
SLURM_STOPPED = (*SLURM_REQUEUE, "CANCELLED")


@dataclass
class RunState:
    remote_dir: str = ""  # absolute, on the pod
    exists: bool = False
    launched: bool = False
    alive: bool = False
    pid: str = ""
    rc: str = ""
    checkpoint: int | None = None
    final: bool = False
    cut: bool = False  # stopped by its budget (guard.sh wrote budget_cut)
    free_kb: int | None = None  # free space on the run folder's disk
    job: str = ""  # under Slurm: the newest job of the run (slurm_job)
    slurm: str = ""  # its state: PENDING, RUNNING, TIMEOUT, CANCELLED, GONE, ...
    partition: str = ""
    reason: str = ""  # why a pending job waits (Resources, Priority, ...)

    @property
    def status(self) -> str:
        if not self.exists or not self.launched:
            return "new"
        if self.alive:
            return "running"
        if self.cut:
            return "cut"
        if self.rc == "0":
            return "finished"
        if self.slurm in SLURM_STOPPED:
            return "killed"
        if self.rc:
            return "killed" if int(self.rc) >= 128 else "failed"
        return "died"

    @property
    def stopped_by_cluster(self) -> bool:
        """Slurm ended the job for reasons of its own (time limit, preemption, a node that
        failed): the training was fine and goes on from its checkpoint in a new job."""
        return self.slurm in SLURM_REQUEUE and self.status == "killed"

    def describe(self) -> str:
        at = (
            f" (newest checkpoint: checkpoint-{self.checkpoint})"
            if self.checkpoint
            else " (no checkpoint yet)"
        )
        if self.job:
            return self._describe_job(at)
        return {
            "new": "not started",
            "running": f"running (pid {self.pid})",
            "finished": "finished",
            "cut": "stopped by its budget (max_usd / max_hours)" + at,
            "killed": f"killed by signal {int(self.rc or 0) - 128 if self.rc else '?'}" + at,
            "failed": f"failed with exit status {self.rc}" + at,
            "died": "gone without an exit status (pod restarted or process killed)" + at,
        }[self.status]

    def _describe_job(self, at: str) -> str:
        job = f"Slurm job {self.job}"
        if self.status == "running":
            if self.slurm == "PENDING":
                why = f" (waiting: {self.reason})" if self.reason not in ("", "-", "None") else ""
                return f"queued in partition {self.partition} as {job}{why}"
            if self.slurm == "UNKNOWN":
                return f"{job}, state unknown: Slurm does not answer (squeue); taken as running"
            return f"{job} {self.slurm.lower()} in partition {self.partition}"
        if self.status == "killed" and self.slurm in SLURM_STOPPED:
            return f"ended by Slurm: {self.slurm} ({job})" + at
        ended = f" ({job}: {self.slurm}; its own output: slurm-{self.job}.out in the run folder)"
        if self.status == "died":
            return "gone without an exit status" + ended + at
        if self.status in ("failed", "killed"):
            return replace(self, job="").describe() + ended
        return replace(self, job="").describe()


def parse_state(facts: dict) -> RunState:
    """The state a pod-side script reported. An answer with no state line at all (the script cut
    short: a dropped connection, a killed shell, a timeout) is no state: it raises Unreachable,
    which the callers retry, instead of reading as "not started" (a live run's checkpoints
    reported gone)."""
    state = RunState(remote_dir=first(facts, "dir"))
    line = first(facts, "run")
    if "no_run_dir" in facts or "no_dir" in facts:
        return state
    if not line:
        raise Unreachable(
            "the pod's answer about the run was cut short (no state line)", short="an answer cut short"
        )
    values = dict(item.partition("=")[::2] for item in line.split())
    state.exists = True
    state.launched = values.get("launched") == "1"
    state.alive = values.get("alive") == "1"
    state.pid = values.get("pid", "")
    state.rc = values.get("rc", "")
    state.checkpoint = int(values["checkpoint"]) if values.get("checkpoint", "").isdigit() else None
    state.final = values.get("final") == "1"
    state.cut = values.get("cut") == "1"
    state.free_kb = int(values["free_kb"]) if values.get("free_kb", "").isdigit() else None
    state.job, state.slurm = values.get("job", ""), values.get("slurm", "")
    state.partition, state.reason = values.get("partition", ""), values.get("reason", "")
    return state


def read_state(ex: Executor, remote_dir: str, run_id: str) -> RunState:
    return parse_state(ex.run("state.sh", remote_dir, run_id, timeout=120).facts)


def parse_attempts(text: str) -> list[dict]:
    attempts: list[dict] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "start":
            attempts.append({"start": int(parts[1]), "from_step": int(parts[2])})
        elif len(parts) == 3 and parts[0] == "end" and attempts and "end" not in attempts[-1]:
            attempts[-1].update(end=int(parts[1]), rc=int(parts[2]))
    return attempts


def list_checkpoints(ex: Executor, run_dir: str) -> list[int]:
    facts = ex.run("checkpoints.sh", run_dir, timeout=120).facts
    return sorted(int(v) for v in facts.get("checkpoint", []) if v.isdigit())


def remote_hashes(ex: Executor, run_dir: str, rel_paths: list[str]) -> dict[str, tuple[int, str]]:
    """{path: (size, sha256)} of the files in the run folder that exist."""
    facts = ex.run("hashes.sh", run_dir, *rel_paths, timeout=1800).facts
    out = {}
    for value in facts.get("file", []):
        size, digest, rel = value.split(" ", 2)
        out[rel] = (int(size), digest)
    return out


@contextmanager
def holding(ex: Executor, remote_dir: str, minutes: int = 30):
    """Within the block the pod's guard does not stop the pod for idleness (an upload, a setup,
    a download from the laptop): REMOTE_DIR/.hold holds a deadline, removed afterwards. A laptop
    that dies inside the block leaves the deadline, which ends the hold all the same."""
    ex.run("hold.sh", remote_dir, 60 * minutes, timeout=60)
    try:
        yield
    finally:
        with suppress(PodError):
            ex.run("hold.sh", remote_dir, 0, timeout=60)


def read_remote_json(ex: Executor, path: str) -> dict:
    result = ex.sh('cat "$1" 2>/dev/null', timeout=60, args=(path,))
    try:
        return json.loads(result.text) if result.rc == 0 and result.text.strip() else {}
    except json.JSONDecodeError:
        return {}


def write_remote_json(ex: Executor, path: str, data: dict) -> None:
    ex.sh(
        'printf "%s" "$1" > "$2.tmp" && mv "$2.tmp" "$2"',
        timeout=60,
        args=(json.dumps(data, indent=2) + "\n", path),
    )
