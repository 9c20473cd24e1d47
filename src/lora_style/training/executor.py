"""Where training runs: one interface, two executors.

``ssh`` reaches a rented pod with the OpenSSH client and rsync, so ``~/.ssh/config``, agents and
keys work as they do in a terminal; ``local`` is this machine (its GPU or CPU; the demo uses it).
Everything the pipeline does on the pod is one of the .sh scripts beside this module, run with
``Executor.run(name, *args)``: the values travel as positional arguments, never inside the
script's text, so both executors run the same commands and no value is ever parsed as shell.

    python -m lora_style.training.machines --pod-settings pod.json 'nvidia-smi; df -h .'

Host keys are checked: a pod's first key is accepted once and remembered in a known-hosts file the
project controls (``known_hosts:``, default ``.state/known_hosts``); a changed key stops everything.

Files travel by rsync, whose own --progress becomes a line every few seconds on stderr (the job's
terminal and log) while a long upload or download runs (progress.py).
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import shell
from .messages import PodError, Unreachable
from .progress import TransferProgress, relay_progress, to_stderr
from .settings import PodSettings
from .ssh_errors import ssh_failure

# ssh exits with 255 when the connection itself fails; rsync reports a broken transport
# (12: protocol stream, 30/35: timeouts) or passes ssh's 255 on.
SSH_FAILED = 255
RSYNC_TRANSPORT_FAILED = {12, 30, 35, 255}


@dataclass
class Result:
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", errors="replace")

    @property
    def facts(self) -> dict[str, list[str]]:
        """A pod-side script's `@@key value` answers."""
        return shell.parse_markers(self.text)


class Executor(ABC):
    """The machine that trains, as seen from here."""

    kind = ""

    def __init__(self, settings: PodSettings, workdir: str | os.PathLike = "."):
        self.settings = settings
        self.name = settings.name or self.kind
        self.workdir = Path(workdir).resolve()
        self.bytes_sent = self.bytes_received = 0  # what file copies moved over the network

    @abstractmethod
    def sh(self, script: str, timeout: float | None = 600, args: tuple = (), stdin: bytes = b"") -> Result:
        """Run a POSIX shell script there as `sh -c script sh args...` (cwd: the login directory,
        or the workdir for local), with `stdin` as its standard input: the one way a secret
        reaches the pod (never an argument, which `ps` shows to every user there).

        Raises Unreachable when the machine does not answer; any other failure is in the result."""

    def run(self, name: str, *args, timeout: float | None = 600, stdin: bytes = b"") -> Result:
        """Run one of the pod-side scripts (<name> beside this module) with its arguments."""
        return self.sh(shell.script(name), timeout, tuple(map(str, args)), stdin)

    def close(self) -> None:
        """Let go of what the executor holds open (the ssh master connection)."""

    @property
    def transport(self) -> Executor:
        """What carries the commands and files: the executor itself, or for a Slurm cluster
        the ssh or local executor that reaches its login node."""
        return self

    def submit_job(self, run_dir: str, session: str, cli: str) -> dict[str, list[str]] | None:
        """A scheduler's executor (slurm.py) hands run.sh to the scheduler and returns its @@
        answers (@@job, @@already). None here: launch.py starts run.sh detached itself."""
        return None

    def scheduler_checks(self, report, args: dict) -> None:
        """A scheduler's executor replaces preflight's checks of the machine's own GPUs (which a
        login node does not have) with the scheduler's (slurm.py). Nothing to change here."""

    @abstractmethod
    def put(
        self,
        local_dir: Path,
        remote_dir: str,
        say: Callable[[str], None] | None = None,
        bwlimit_kib: int | None = None,
        basis: str | None = None,
    ) -> None:
        """Copy the contents of local_dir into remote_dir there (which must exist).

        A long copy reports its progress through `say` (default: stderr); `bwlimit_kib` caps its
        rate in KiB/s (rsync's --bwlimit), which the tests use to make a copy take its time.
        `basis`: a folder there laid out like remote_dir (an earlier upload of the same run), whose
        files rsync copies when unchanged and sends only the differences against otherwise."""

    @abstractmethod
    def get(
        self,
        remote_file: str,
        local_file: Path,
        say: Callable[[str], None] | None = None,
        bwlimit_kib: int | None = None,
    ) -> None:
        """Copy one file from there to local_file; `say` and `bwlimit_kib` as for put()."""

    @abstractmethod
    def where(self) -> str:
        """The machine in words, for messages."""


class LocalExecutor(Executor):
    """This machine. Relative paths are relative to the Snakemake working directory."""

    kind = "local"

    def sh(self, script: str, timeout: float | None = 600, args: tuple = (), stdin: bytes = b"") -> Result:
        # A session of its own: a training started from here survives Ctrl-C of Snakemake. The
        # environment is the user's, without the local side's bin/ first on PATH.
        try:
            proc = subprocess.run(
                ["sh", "-c", script, "sh", *args],
                cwd=self.workdir,
                capture_output=True,
                timeout=timeout,
                start_new_session=True,
                env=clean_environment(),
                input=stdin,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unreachable(f"a command on this machine took over {timeout:.0f} s") from exc
        return Result(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))

    def _path(self, path: str) -> Path:
        return self.workdir / os.path.expanduser(path)

    # A copy on one machine's disks: no progress to report, no rate to cap.
    def put(self, local_dir: Path, remote_dir: str, say=None, bwlimit_kib=None, basis=None) -> None:
        shutil.copytree(local_dir, self._path(remote_dir), dirs_exist_ok=True)

    def get(self, remote_file: str, local_file: Path, say=None, bwlimit_kib=None) -> None:
        try:
            shutil.copyfile(self._path(remote_file), local_file)
        except OSError as exc:
            raise PodError(f"cannot copy {remote_file}: {exc.strerror}") from exc

    def where(self) -> str:
        return "this machine"


def clean_environment() -> dict:
    """This process's environment without the local side's bin/ in front of PATH (where the
    Makefile and a venv's activation put it): a training on this machine must not find the local
    side's tools first (its torchrun, which LLaMA-Factory starts by name for several GPUs)."""
    env = dict(os.environ)
    path = env.get("PATH", "").split(os.pathsep)
    if path and os.path.realpath(path[0]) == os.path.realpath(os.path.dirname(sys.executable)):
        env["PATH"] = os.pathsep.join(path[1:])
    return env


def _ssh_config_value(value: str) -> str:
    """A value for `ssh -o Key=value`: ssh splits some values on blanks unless double-quoted."""
    return f'"{value}"' if re.search(r"\s", value) else value


class SSHExecutor(Executor):
    """A pod over SSH: `ssh` for commands, `rsync -e ssh` for files, with the same options."""

    kind = "ssh"

    def __init__(self, settings: PodSettings, workdir: str | os.PathLike = "."):
        super().__init__(settings, workdir)
        if not settings.host:
            raise PodError(f"pods.{self.name}.host is missing: the pod's IP address or ssh alias")
        self.known_hosts = self.workdir / os.path.expanduser(self.settings.known_hosts)
        self._control_dir: str | None = None

    def control_path(self) -> str:
        """The socket of this executor's one ssh connection, which every ssh and rsync of this
        process shares (OpenSSH multiplexing): one handshake per job instead of one per command.
        It lives in a private folder (mode 0700, made by mkdtemp) in the temporary folder, or
        /tmp where that path is too long: a socket's path is limited to 104 bytes on macOS and ssh
        adds 17 while creating it. The master is told to exit and the folder removed when this
        process ends (close())."""
        if self._control_dir is None:
            short = len(tempfile.gettempdir()) > 60 and os.path.isdir("/tmp")
            self._control_dir = tempfile.mkdtemp(prefix="lora-ssh-", dir="/tmp" if short else None)
            atexit.register(self.close)
        return os.path.join(self._control_dir, "m")

    def destination(self) -> str:
        user = self.settings.user
        return f"{user}@{self.settings.host}" if user else self.settings.host

    def identity_file(self) -> Path | None:
        path = self.settings.identity_file
        return Path(os.path.expanduser(path)) if path else None

    def ssh_options(self) -> list[str]:
        """Options shared by ssh and rsync. No -F: the user's ~/.ssh/config still applies."""
        opts = [
            "-o",
            "BatchMode=yes",  # never prompt; a job cannot answer
            "-o",
            "StrictHostKeyChecking=accept-new",  # first key remembered, a changed one refused
            "-o",
            f"UserKnownHostsFile={_ssh_config_value(str(self.known_hosts))}",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            # One connection per job: the first command opens it, the rest ride on it. It closes
            # itself once idle for longer than a poll interval (and close() ends it at once), so
            # a process killed before close() leaves no connection behind for long.
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={_ssh_config_value(self.control_path())}",
            "-o",
            f"ControlPersist={max(120, 3 * int(float(self.settings.poll_seconds)))}",
        ]
        if self.settings.port:
            opts += ["-p", str(self.settings.port)]
        if self.settings.host_key_alias:
            # A rented pod's key is pinned to its id, whatever address it has today.
            opts += ["-o", f"HostKeyAlias={self.settings.host_key_alias}"]
        key = self.identity_file()
        if key:
            # Only this key: no agent keys tried first (servers cut off after a few failures).
            opts += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh_argv(self, remote_command: str) -> list[str]:
        return ["ssh", *self.ssh_options(), self.destination(), remote_command]

    def _check_key(self) -> None:
        key = self.identity_file()
        if key and not key.is_file():
            raise PodError(
                f"pods.{self.name}.identity_file: {key} does not exist. Create a key with "
                f"`ssh-keygen -t ed25519 -f {key}` and add {key}.pub to the pod (RunPod: Settings -> "
                "SSH Public Keys), or point identity_file at your existing key"
            )

    def close(self) -> None:
        if self._control_dir is None:
            return
        if os.path.exists(self.control_path()):
            subprocess.run(
                [
                    "ssh",
                    "-o",
                    f"ControlPath={_ssh_config_value(self.control_path())}",
                    "-O",
                    "exit",
                    self.destination(),
                ],
                capture_output=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    def sh(self, script: str, timeout: float | None = 600, args: tuple = (), stdin: bytes = b"") -> Result:
        self._check_key()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        # The login shell on the pod runs `sh -c <script> sh <args>`: one quoting layer, by shlex.
        argv = self.ssh_argv(shlex.join(["sh", "-c", script, "sh", *args]))
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, input=stdin)
        except FileNotFoundError:
            raise PodError("ssh not found on this machine: install the OpenSSH client") from None
        except subprocess.TimeoutExpired as exc:
            raise Unreachable(f"{self.where()} did not finish a command within {timeout:.0f} s") from exc
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == SSH_FAILED:
            raise ssh_failure(err, self)
        return Result(proc.returncode, proc.stdout, err)

    def rsync_argv(
        self,
        source: str,
        dest: str,
        bwlimit_kib: int | None = None,
        basis: str | None = None,
        ignore_times: bool = False,
    ) -> list[str]:
        """The rsync command line. Only options that macOS's rsync (openrsync, macOS 15 on) also
        has: no --info, --mkpath or --append-verify (tests/graph/test_mac_userland.py pins them)."""
        argv = [
            "rsync",
            "-a",
            "--partial",
            "--progress",
            "--stats",
            "-e",
            shlex.join(["ssh", *self.ssh_options()]),
        ]
        if ignore_times:
            argv.append("--ignore-times")
        if bwlimit_kib:
            argv.append(f"--bwlimit={int(bwlimit_kib)}")
        if basis:
            argv.append(f"--copy-dest={basis}")
        return [*argv, source, dest]

    def _rsync(
        self,
        direction: str,
        source: str,
        dest: str,
        say,
        bwlimit_kib,
        basis: str | None = None,
        ignore_times: bool = False,
    ) -> None:
        """rsync with its --progress output (stdout) turned into throttled lines for `say` as
        it comes, and its stderr kept whole for the error explanation."""
        self._check_key()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(
                self.rsync_argv(source, dest, bwlimit_kib, basis, ignore_times),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise PodError("rsync not found on this machine: install rsync") from None
        progress = TransferProgress(direction, say or to_stderr)
        with proc:
            try:
                err = relay_progress(proc, progress)
                proc.wait()
            except BaseException:  # Ctrl-C, or a bug here: rsync must not outlive this process
                proc.kill()
                raise
        if proc.returncode in RSYNC_TRANSPORT_FAILED:
            raise ssh_failure(err, self)
        if proc.returncode:
            raise PodError(f"rsync failed ({proc.returncode}): {err.strip()[-2000:]}")
        self.bytes_sent += progress.sent
        self.bytes_received += progress.received

    def put(self, local_dir: Path, remote_dir: str, say=None, bwlimit_kib=None, basis=None) -> None:
        # --ignore-times: rsync's quick check (size, and mtime to the second) would take an edit
        # of the same size made within a second of the earlier upload for the basis's copy, and
        # land the old data. Every file goes through the delta algorithm instead, which still
        # sends only what differs; the cost is reading the files at both ends.
        self._rsync(
            "uploading",
            f"{local_dir}/",
            f"{self.destination()}:{remote_dir}/",
            say,
            bwlimit_kib,
            basis,
            ignore_times=True,
        )

    def get(self, remote_file: str, local_file: Path, say=None, bwlimit_kib=None) -> None:
        self._rsync("downloading", f"{self.destination()}:{remote_file}", str(local_file), say, bwlimit_kib)

    def where(self) -> str:
        port = self.settings.port
        return f"pod '{self.name}' ({self.destination()}{f' port {port}' if port else ''})"
