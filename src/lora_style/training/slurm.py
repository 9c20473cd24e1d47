"""A Slurm cluster as the machine that trains: ``executor: slurm``.

Slurm schedules; this module only hands it the run. Commands and files travel through an inner
executor: ssh to the login node (``host`` set; the same keys, known-hosts file and host-key rules
as a pod) or this machine (no ``host``). So the run folder, its identity (the inputs' hash), the
upload, the polls and the download are exactly the ssh or local executor's. Only the start of a
training differs: ``sbatch`` of slurm_job.sh, which runs the folder's run.sh on a compute node,
instead of launch.sh's detached process. Besides run_state.py's files, a run folder then holds:

    slurm_job       the id of its newest job: lib.sh's run_state asks Slurm (squeue, else sacct)
                    whether it is queued, running or how it ended
    slurm_job.sh    the job script, written at each submit
    slurm-N.out     what job N printed outside train.log (Slurm's own errors, a failed --chdir)

A rerun attaches to a queued or running job; a job that Slurm ended (time limit, preemption, a
failed node) is resubmitted by wait and resumes from the newest complete checkpoint; after a
scancel the next call resumes it; a training that failed is reported, not resubmitted. With
``nodes`` above 1 the job script runs run.sh on every node under srun, and LLaMA-Factory's
torchrun trains across them (slurm_job.sh).

Preflight asks the login node (slurm_probe.sh) whether sbatch is there, the partition exists and
is up, the time fits its limit and its nodes have the GPUs asked for. A login node has no GPUs
of the compute nodes to measure, so the memory estimate is shown, not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from . import shell
from .estimate import needs_cuda
from .executor import Executor, LocalExecutor, Result, SSHExecutor
from .messages import PodError
from .preflight import Check
from .processes import world_size
from .settings import PodSettings


class SlurmExecutor(Executor):
    """A Slurm cluster, reached on its login node (ssh) or on this machine."""

    kind = "slurm"

    def __init__(self, settings: PodSettings, workdir="."):
        budget = [key for key in ("max_usd", "max_hours") if getattr(settings, key)]
        if budget:
            # The budget's guard watches the trainings of the machine it runs on; a job runs on
            # a compute node. Refused rather than silently not kept.
            at = f"pods.{settings.name or '?'}"
            raise PodError(
                f"{at}.{budget[0]}: a budget is not kept on a Slurm cluster (its guard "
                f"cannot see the compute nodes); remove it, and bound each job with "
                f"{at}.time instead"
            )
        login = replace(settings, executor="ssh" if settings.host else "local")
        self._login = (SSHExecutor if settings.host else LocalExecutor)(login, workdir)
        super().__init__(settings, workdir)

    @property
    def transport(self) -> Executor:
        return self._login

    # What the copies moved is counted by the executor that made them.
    @property
    def bytes_sent(self) -> int:
        return self._login.bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self._login.bytes_sent = value

    @property
    def bytes_received(self) -> int:
        return self._login.bytes_received

    @bytes_received.setter
    def bytes_received(self, value: int) -> None:
        self._login.bytes_received = value

    def sh(self, script: str, timeout: float | None = 600, args: tuple = (), stdin: bytes = b"") -> Result:
        return self._login.sh(script, timeout, args, stdin)

    def put(self, local_dir: Path, remote_dir: str, say=None, bwlimit_kib=None, **more) -> None:
        self._login.put(local_dir, remote_dir, say=say, bwlimit_kib=bwlimit_kib, **more)

    def get(self, remote_file: str, local_file: Path, say=None, bwlimit_kib=None, **more) -> None:
        self._login.get(remote_file, local_file, say=say, bwlimit_kib=bwlimit_kib, **more)

    def close(self) -> None:
        self._login.close()

    def where(self) -> str:
        if isinstance(self._login, SSHExecutor):
            port = self.settings.port
            login = f"login node {self._login.destination()}{f' port {port}' if port else ''}"
        else:
            login = "submitted from this machine"
        part = self.settings.partition
        return f"Slurm cluster '{self.name}' ({f'partition {part}, ' if part else ''}{login})"

    def submit_job(self, run_dir: str, session: str, cli: str) -> dict[str, list[str]]:
        """sbatch slurm_job.sh in the run folder, unless its job is queued or running."""
        result = self.run(
            "slurm_submit.sh",
            run_dir,
            session,
            cli,
            shell.script("slurm_job.sh"),
            *sbatch_options(self.settings),
            timeout=120,
        )
        facts, at = result.facts, f"pods.{self.name}"
        if "no_sbatch" in facts:
            raise PodError(
                f"sbatch is not found on {self.where()}: Slurm's commands must be on the "
                f"PATH of a non-interactive login there (or set {at}.host to a login node)"
            )
        if "unknown" in facts:
            raise PodError(
                f"Slurm on {self.where()} does not answer about job "
                f"{shell.first(facts, 'unknown')} of this run, which may still run, so no "
                "second job was submitted; run again once `squeue` answers there"
            )
        if "sbatch_failed" in facts:
            said = " / ".join(facts.get("sbatch_said", [])) or "no message"
            raise PodError(
                f"sbatch refused the job on {self.where()} (exit "
                f"{shell.first(facts, 'sbatch_failed')}): {said}. Check {at}.partition, "
                f"{at}.gpus, {at}.time and {at}.sbatch_args against `sinfo` there"
            )
        if not ({"job", "already", "busy"} & set(facts)):
            raise PodError(
                f"submitting to {self.where()} failed (exit {result.rc}): {result.err.strip()[-500:]}"
            )
        facts["detach"] = ["sbatch"]
        return facts

    def scheduler_checks(self, report, args: dict) -> None:
        """Slurm's checks in place of the login node's own GPUs (slurm_probe.sh, one command)."""
        facts = self.run("slurm_probe.sh", timeout=120).facts
        report.checks = [c for c in report.checks if not c.name.startswith("GPU")]
        report.checks += slurm_checks(facts, replace(self.settings, name=self.name), args, report.memory)
        report.detach = "sbatch"


def sbatch_options(settings: PodSettings) -> list[str]:
    """sbatch's options from a pod's settings; the user's sbatch_args last, as they are."""
    options = []
    if settings.partition:
        options.append(f"--partition={settings.partition}")
    if int(settings.nodes or 1) > 1:  # one launcher per node (slurm_job.sh's srun)
        options += [f"--nodes={int(settings.nodes)}", "--ntasks-per-node=1"]
    if settings.gpus:
        options.append(f"--gres=gpu:{int(settings.gpus)}")
    if settings.time is not None:
        options.append(f"--time={settings.time}")
    return options + [str(arg) for arg in settings.sbatch_args or []]


# --------------------------------------------------------------------------------- preflight


@dataclass
class Node:
    name: str
    partition: str
    default: bool
    avail: str  # up, down, drain, inact
    time_limit: str  # as sinfo prints it: infinite, 2:00, 1-00:00:00
    gres: str

    @property
    def gpus(self) -> int:
        return node_gpus(self.gres)


def parse_nodes(lines: list[str]) -> list[Node]:
    """slurm_probe.sh's `@@node NODE PARTITION AVAIL TIMELIMIT GRES` lines."""
    nodes = []
    for line in lines:
        parts = line.split()
        if len(parts) == 5:
            name, partition, avail, limit, gres = parts
            nodes.append(Node(name, partition.rstrip("*"), partition.endswith("*"), avail, limit, gres))
    return nodes


def node_gpus(gres: str) -> int:
    """GPUs in a node's gres as sinfo prints it: `gpu:2`, `gpu:a100:4(S:0-1)`, `gpu:a:2,gpu:b:2`,
    `(null)`."""
    total = 0
    for entry in re.split(r",(?![^()]*\))", gres):
        parts = entry.split("(", 1)[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_time(value) -> int | None:
    """Seconds of a Slurm time (`minutes`, `minutes:seconds`, `hours:minutes:seconds`, `days-hours`,
    `days-hours:minutes`, `days-hours:minutes:seconds`), None for no limit."""
    text = str(value).strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, *parts
    else:
        h, m, s = parts[:3]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def slurm_checks(facts: dict, settings: PodSettings, args: dict, memory=None) -> list[Check]:
    """slurm_probe.sh's answers against the pod's partition, time and gpus and the profile."""
    at = f"pods.{settings.name or '?'}"
    tools = dict(value.split(" ", 1) for value in facts.get("tool", []) if " " in value)
    missing = [tool for tool in ("sbatch", "squeue", "sinfo") if tool not in tools]
    if missing:
        where = "the login node's" if settings.host else "this machine's"
        return [
            Check(
                "Slurm",
                False,
                f"{', '.join(missing)} not found on {where} PATH (a non-interactive shell's)",
                f"set {at}.host to the cluster's login node, where Slurm's commands must be on "
                "the PATH without an interactive login (no `module load` needed)",
            )
        ]
    checks = [Check("Slurm", True, f"sbatch at {tools['sbatch']}")]
    if shell.first(facts, "sinfo_rc") != "0":
        said = " / ".join(facts.get("sinfo_said", [])) or "no message"
        return checks + [
            Check(
                "partition",
                False,
                f"sinfo failed: {said}",
                "is the cluster's controller up? Try `sinfo` on the login node",
            )
        ]
    nodes = parse_nodes(facts.get("node", []))
    partitions = sorted({n.partition for n in nodes})
    wanted = settings.partition or next((n.partition for n in nodes if n.default), "")
    known = f"this cluster has {', '.join(partitions) or 'none'}"
    if not wanted or wanted not in partitions:
        detail = (
            f"{at}.partition '{wanted}' is not a partition of this cluster ({known})"
            if wanted
            else f"{at}.partition is not set and the cluster has no default ({known})"
        )
        return checks + [Check("partition", False, detail, f"set {at}.partition to one of them")]
    mine = [n for n in nodes if n.partition == wanted]
    limit = mine[0].time_limit
    if mine[0].avail != "up":
        checks.append(
            Check(
                "partition",
                False,
                f"partition {wanted} is {mine[0].avail}: a job would wait there without starting",
                f"set {at}.partition to another one ({known}), or ask the admins",
            )
        )
    else:
        checks.append(Check("partition", True, f"{wanted}: {len(mine)} node(s), time limit {limit}"))
    checks.append(time_check(settings, wanted, limit, at))
    nodes = int(settings.nodes or 1)
    if nodes > len(mine):
        checks.append(
            Check(
                "nodes",
                False,
                f"{at}.nodes is {nodes}, but partition {wanted} has {len(mine)} node(s)",
                f"set {at}.nodes to {len(mine)} or less",
            )
        )
    elif nodes > 1:
        checks.append(
            Check(
                "nodes",
                True,
                f"{nodes} nodes train one run: torchrun across them, "
                f"{world_size(settings)} process(es) on each",
            )
        )
    checks += gpu_checks(settings, args, mine, wanted, at, memory)
    return checks


def time_check(settings: PodSettings, partition: str, limit: str, at: str) -> Check:
    asked = settings.time
    try:
        seconds = parse_time(asked) if asked is not None else None
    except ValueError:
        return Check(
            "time limit",
            False,
            f"{at}.time '{asked}' is not a Slurm time",
            f"write {at}.time as minutes, HH:MM:SS or D-HH:MM:SS",
        )
    most = parse_time(limit)
    if seconds is not None and most is not None and seconds > most:
        return Check(
            "time limit",
            False,
            f"{at}.time {asked} is over partition {partition}'s "
            f"limit of {limit}: the job would be refused or wait forever",
            f"set {at}.time to {limit} or less: a training that runs out of time goes on "
            "from its last checkpoint in a new job",
        )
    return Check(
        "time limit",
        True,
        f"{asked if asked is not None else 'the partition default'} "
        f"per job (partition limit {limit}); a job that runs out of time is resubmitted "
        "and resumes from its last checkpoint",
    )


def gpu_checks(
    settings: PodSettings, args: dict, nodes: list[Node], partition: str, at: str, memory
) -> list[Check]:
    asked = int(settings.gpus or 0)
    most = max(n.gpus for n in nodes)
    gres = ", ".join(sorted({n.gres for n in nodes}))
    cuda = needs_cuda(args)
    if asked > most:
        return [
            Check(
                "GPUs",
                False,
                f"{at}.gpus is {asked}, but the nodes of partition {partition} "
                f"have at most {most} (gres: {gres})",
                f"set {at}.gpus to {most} or less, or choose a partition with more GPUs per "
                "node (`sinfo -o '%P %G'` on the login node)",
            )
        ]
    if cuda and not asked:
        return [
            Check(
                "GPUs",
                False,
                f"the profile sets {', '.join(cuda)}, which need CUDA, but "
                f"{at}.gpus is not set, so the job would get no GPU",
                f"set {at}.gpus (the nodes of partition {partition} have up to {most})",
            )
        ]
    if not asked:
        return [Check("GPUs", True, "none asked for: CPU training (the profile needs no CUDA)")]
    checks = [
        Check(
            "GPUs",
            True,
            f"{asked} per job (--gres=gpu:{asked}), one training process "
            f"each; the nodes of partition {partition} have up to {most}",
        )
    ]
    if memory is not None:
        checks.append(
            Check(
                "GPU memory",
                True,
                f"the run needs {memory.describe()}; not measured "
                "from the login node: the partition's GPUs must hold it",
            )
        )
    return checks
