"""A real one-node Slurm cluster on this machine, for the Slurm executor's tests.

Debian's slurmctld, slurmd and munged (packages slurmctld slurmd slurm-client munge), started as
root in a temporary folder: a munge key and socket of their own, a slurm.conf naming this host
with its CPUs and memory, and each daemon with its own state, spool, pid and log files, on free
ports, so nothing of the machine's own Slurm or munge (if any) is read or touched. Clients find
the cluster through SLURM_CONF, which the fixture sets for this process (and so for every
snakemake it starts) and which the test sshd hands to its logins.

The node has two partitions: `debug` (the default, no time limit) and `short` (MaxTime 2 min,
for a time limit refused at preflight), and declares two GPUs as a generic resource without
device files (gres.conf `Count=2`), so `--gres=gpu:N` is scheduled (and refused above 2) on a
machine that has none; nothing here uses a GPU.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol")


def missing_binaries() -> list[str]:
    found = {
        name: shutil.which(name)
        or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
        for name in (*DAEMONS, *CLIENTS)
    }
    return [name for name, path in found.items() if not path]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


class SlurmCluster:
    """slurmctld + slurmd + munged in `root`; start() waits until the nodes take jobs.

    nodes > 1: as many nodes (n1, n2, ...), each a slurmd of its own on this machine (`slurmd -N`,
    a port each), for a job over several nodes."""

    def __init__(self, root: Path, nodes: int = 1):
        self.root = root.resolve()
        self.host = socket.gethostname().split(".")[0]
        self.names = [self.host] if nodes == 1 else [f"n{i}" for i in range(1, nodes + 1)]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        r = self.root
        for sub in ("munge", "ctld", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o711)  # munged wants its socket's folder searchable by all
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        cpus = os.cpu_count() or 1
        memory = max(256, int(_memory_mb() * 0.8 / len(self.names)))
        several = len(self.names) > 1
        node = "%n" if several else ""
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=loratest",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    f"SlurmctldPort={free_port()}",
                    *([] if several else [f"SlurmdPort={free_port()}"]),
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"StateSaveLocation={r / 'ctld'}",
                    f"SlurmdSpoolDir={r / 'spool' / node}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / f'slurmd{node}.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / f'slurmd{node}.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/backfill",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "GresTypes=gpu",
                    # A cancelled or timed-out job's processes get SIGTERM, then SIGKILL this much later.
                    "KillWait=5",
                    # Ended jobs stay visible to squeue this long (no accounting here to ask afterwards).
                    "MinJobAge=3600",
                    "SchedulerParameters=sched_interval=2",
                    *(
                        f"NodeName={name} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:2 "
                        + (f"NodeHostname={self.host} Port={free_port()} " if several else "")
                        + "State=UNKNOWN"
                        for name in self.names
                    ),
                    f"PartitionName=debug Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE State=UP",
                    f"PartitionName=short Nodes={','.join(self.names)} MaxTime=2 State=UP",
                    "",
                ]
            )
        )
        # gres/gpu counts device files: two empty files per node stand in for /dev/nvidia0 and 1.
        gres = ["AutoDetect=off"]
        for name in self.names:
            for i in range(2):
                (r / f"fake-gpu-{name}-{i}").touch()
            gres.append(f"NodeName={name} Name=gpu File={r}/fake-gpu-{name}-[0-1]")
            (r / "spool" / name).mkdir(parents=True, exist_ok=True)
        (r / "gres.conf").write_text("\n".join(gres) + "\n")

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        env = {**os.environ, **self.env}
        self.procs.append(
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        )

    def start(self, timeout: float = 180) -> SlurmCluster:
        self._write_config()
        r = self.root
        self._spawn(
            [
                _binary("munged"),
                "-F",
                "-f",
                f"--socket={self.munge_socket}",
                f"--key-file={r / 'munge' / 'munge.key'}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                f"--seed-file={r / 'munge' / 'seed'}",
            ],
            "munged",
        )
        self._wait(lambda: self.munge_socket.exists(), 30, "munged to open its socket")
        self._spawn([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        for name in self.names:
            node = ["-N", name] if len(self.names) > 1 else []
            self._spawn([_binary("slurmd"), "-D", *node, "-f", str(self.conf)], f"slurmd-{name}")
        self._wait(self._node_idle, timeout, "the nodes to take jobs")
        return self

    def _node_idle(self) -> bool:
        states = self.client("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
        ready = {
            line.split()[0]
            for line in states
            if line.strip() and line.split()[1].startswith(("idle", "mixed", "allocated"))
        }
        return ready >= set(self.names)

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def client(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, squeue, scancel, ...) against this cluster."""
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
            env={**os.environ, **self.env},
        )

    def job_state(self, job: str) -> str:
        return self.client("squeue", "-h", "-t", "all", "-j", job, "-o", "%T", check=False).stdout.strip()

    def stop(self) -> None:
        """Stop the daemons (slurmd first, so no job outlives it) and wait for them to exit."""
        if self.conf.exists():
            self.client("scancel", "--user", str(os.getuid()), check=False)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs = []


def start_cluster(root: Path, nodes: int = 1) -> SlurmCluster:
    """A started cluster, or a skip (a fail in CI, which installs Slurm) where it cannot run."""
    import pytest

    missing = missing_binaries()
    why = (
        f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurmctld "
        "slurmd slurm-client munge"
        if missing
        else ""
        if os.geteuid() == 0
        else "slurmd must run as root here"
    )
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm tests: {why}")
        pytest.skip(why)
    return SlurmCluster(root, nodes).start()
