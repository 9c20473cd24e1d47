"""Where training runs: one interface, two executors.

``ssh`` reaches a rented pod with the OpenSSH client and rsync, so ``~/.ssh/config``, agents and
keys work as they do in a terminal; ``local`` is this machine (its GPU or CPU; the demo uses it).
Everything the pipeline does on the pod is a POSIX shell script given to ``Executor.sh()``, with
every value inside it passed through ``shlex.quote``, so both executors run the same commands.

    python scripts/executor.py --pod-settings pod.json 'nvidia-smi; df -h .'

Host keys are checked: a pod's first key is accepted once and remembered in a known-hosts file the
project controls (``known_hosts:``, default ``.state/known_hosts``); a changed key stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KNOWN_HOSTS = ".state/known_hosts"
# ssh exits with 255 when the connection itself fails; rsync reports a broken transport
# (12: protocol stream, 30/35: timeouts) or passes ssh's 255 on.
SSH_FAILED = 255
RSYNC_TRANSPORT_FAILED = {12, 30, 35, 255}


class PodError(RuntimeError):
    """A problem with the pod, worded as what is wrong and what to change."""


class Unreachable(PodError):
    """The pod did not answer. Maybe transient: a following loop retries, a launch does not."""

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short or message  # for a retry line: what ssh said, without the advice


@dataclass
class Result:
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", errors="replace")


class Executor(ABC):
    """The machine that trains, as seen from here."""

    kind = ""

    def __init__(self, settings: dict, workdir: str | os.PathLike = "."):
        self.settings = settings
        self.name = settings.get("name", self.kind)
        self.workdir = Path(workdir).resolve()

    @abstractmethod
    def sh(self, script: str, timeout: float | None = 600) -> Result:
        """Run a POSIX shell script there (cwd: the login directory, or the workdir for local).

        Raises Unreachable when the machine does not answer; any other failure is in the result."""

    @abstractmethod
    def put(self, local_dir: Path, remote_dir: str) -> None:
        """Copy the contents of local_dir into remote_dir there (which must exist)."""

    @abstractmethod
    def get(self, remote_file: str, local_file: Path) -> None:
        """Copy one file from there to local_file."""

    @abstractmethod
    def where(self) -> str:
        """The machine in words, for messages."""


class LocalExecutor(Executor):
    """This machine. Relative paths are relative to the Snakemake working directory."""

    kind = "local"

    def sh(self, script: str, timeout: float | None = 600) -> Result:
        # A session of its own: a training started from here survives Ctrl-C of Snakemake.
        try:
            proc = subprocess.run(["sh", "-c", script], cwd=self.workdir, capture_output=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise Unreachable(f"a command on this machine took over {timeout:.0f} s") from exc
        return Result(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))

    def _path(self, path: str) -> Path:
        return self.workdir / os.path.expanduser(path)

    def put(self, local_dir: Path, remote_dir: str) -> None:
        shutil.copytree(local_dir, self._path(remote_dir), dirs_exist_ok=True)

    def get(self, remote_file: str, local_file: Path) -> None:
        try:
            shutil.copyfile(self._path(remote_file), local_file)
        except OSError as exc:
            raise PodError(f"cannot copy {remote_file}: {exc.strerror}") from exc

    def where(self) -> str:
        return "this machine"


def _ssh_config_value(value: str) -> str:
    """A value for `ssh -o Key=value`: ssh splits some values on blanks unless double-quoted."""
    return f'"{value}"' if re.search(r"\s", value) else value


class SSHExecutor(Executor):
    """A pod over SSH: `ssh` for commands, `rsync -e ssh` for files, with the same options."""

    kind = "ssh"

    def __init__(self, settings: dict, workdir: str | os.PathLike = "."):
        super().__init__(settings, workdir)
        if not settings.get("host"):
            raise PodError(f"pods.{self.name}.host is missing: the pod's IP address or ssh alias")
        self.known_hosts = self.workdir / os.path.expanduser(
            settings.get("known_hosts") or DEFAULT_KNOWN_HOSTS)

    def destination(self) -> str:
        user = self.settings.get("user")
        return f"{user}@{self.settings['host']}" if user else self.settings["host"]

    def identity_file(self) -> Path | None:
        path = self.settings.get("identity_file")
        return Path(os.path.expanduser(path)) if path else None

    def ssh_options(self) -> list[str]:
        """Options shared by ssh and rsync. No -F: the user's ~/.ssh/config still applies."""
        opts = [
            "-o", "BatchMode=yes",                     # never prompt; a job cannot answer
            "-o", "StrictHostKeyChecking=accept-new",  # first key remembered, a changed one refused
            "-o", f"UserKnownHostsFile={_ssh_config_value(str(self.known_hosts))}",
            "-o", "ConnectTimeout=20",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
        ]
        if self.settings.get("port"):
            opts += ["-p", str(self.settings["port"])]
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
                "SSH Public Keys), or point identity_file at your existing key")

    def sh(self, script: str, timeout: float | None = 600) -> Result:
        self._check_key()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        # The login shell on the pod runs `sh -c <script>`: one quoting layer, done by shlex.
        argv = self.ssh_argv(shlex.join(["sh", "-c", script]))
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise PodError("ssh not found on this machine: install the OpenSSH client") from None
        except subprocess.TimeoutExpired as exc:
            raise Unreachable(f"{self.where()} did not finish a command within {timeout:.0f} s") from exc
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == SSH_FAILED:
            raise Unreachable(explain_ssh_failure(err, self), ssh_said(err))
        return Result(proc.returncode, proc.stdout, err)

    def _rsync(self, *paths: str) -> None:
        self._check_key()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        argv = ["rsync", "-a", "--partial", "-e", shlex.join(["ssh", *self.ssh_options()]), *paths]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise PodError("rsync not found on this machine: install rsync") from None
        if proc.returncode in RSYNC_TRANSPORT_FAILED:
            raise Unreachable(explain_ssh_failure(proc.stderr, self), ssh_said(proc.stderr))
        if proc.returncode:
            raise PodError(f"rsync failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    def put(self, local_dir: Path, remote_dir: str) -> None:
        self._rsync(f"{local_dir}/", f"{self.destination()}:{remote_dir}/")

    def get(self, remote_file: str, local_file: Path) -> None:
        self._rsync(f"{self.destination()}:{remote_file}", str(local_file))

    def where(self) -> str:
        port = self.settings.get("port")
        return f"pod '{self.name}' ({self.destination()}{f' port {port}' if port else ''})"


# What ssh says on stderr -> what it means and what to change. First match wins.
SSH_PROBLEMS = [
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed",
     "the pod's host key is not the one remembered in {known_hosts}. If you replaced the pod "
     "(a new pod often reuses the address), forget the old key with "
     "`ssh-keygen -R '{hostport}' -f {known_hosts}` and run again; otherwise stop: someone may "
     "be in the middle"),
    (r"Permission denied \(|Too many authentication failures",
     "the pod refused the key{key}. Add the matching public key to the pod (RunPod: Settings -> "
     "SSH Public Keys, then restart the pod, or append it to ~/.ssh/authorized_keys there), or "
     "set pods.{name}.identity_file / pods.{name}.user"),
    (r"Could not resolve hostname|Name or service not known|nodename nor servname",
     "the host name does not resolve. Check pods.{name}.host (RunPod: Connect -> "
     "'SSH over exposed TCP' shows the IP and port)"),
    (r"Connection refused|Connection timed out|No route to host|Network is unreachable"
     r"|Operation timed out|Connection closed|Connection reset|kex_exchange_identification"
     r"|timed out",
     "the pod does not answer. Is it running? Check pods.{name}.host and pods.{name}.port "
     "against RunPod's Connect -> 'SSH over exposed TCP' (the port changes when a pod restarts)"),
]


def ssh_said(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or "no message"


def explain_ssh_failure(stderr: str, executor: SSHExecutor) -> str:
    port = executor.settings.get("port")
    host = executor.settings["host"]
    key = executor.identity_file()
    fields = {
        "known_hosts": executor.known_hosts,
        "hostport": f"[{host}]:{port}" if port and port != 22 else host,
        "name": executor.name,
        "key": f" {key}" if key else "s offered (ssh-agent, ~/.ssh/config)",
    }
    said = ssh_said(stderr)
    for pattern, advice in SSH_PROBLEMS:
        if re.search(pattern, stderr, re.IGNORECASE):
            return f"{executor.where()}: {advice.format(**fields)} (ssh: {said})"
    return f"{executor.where()}: ssh failed (ssh: {said})"


EXECUTORS = {"ssh": SSHExecutor, "local": LocalExecutor}


def make_executor(settings: dict, workdir: str | os.PathLike = ".") -> Executor:
    kind = settings.get("executor")
    if kind not in EXECUTORS:
        raise PodError(f"pods.{settings.get('name', '?')}.executor: '{kind}' is not one of "
                       f"{', '.join(EXECUTORS)}")
    return EXECUTORS[kind](settings, workdir)


def load_settings(value: str) -> dict:
    """A pod's settings: JSON text (what the rules pass), or the path of a JSON file."""
    inline = value.lstrip().startswith("{")
    where = "--pod-settings (JSON text)" if inline else f"--pod-settings file {value}"
    try:
        text = value if inline else Path(value).read_text(encoding="utf-8")
        settings = json.loads(text)
    except OSError as exc:
        raise PodError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PodError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise PodError(f"{where} is not a JSON object (a pods: entry with its name)")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pod-settings", required=True,
                        help="a pods: entry (with its name) as JSON, or a file holding it")
    parser.add_argument("script", help="shell script to run there")
    args = parser.parse_args(argv)
    try:
        result = make_executor(load_settings(args.pod_settings)).sh(args.script)
    except PodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result.out)
    sys.stderr.write(result.err)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
