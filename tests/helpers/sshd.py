"""A throwaway OpenSSH server on 127.0.0.1 that plays the pod in the tests.

It runs Debian's real sshd in the foreground on a free port, with its own host key, client key,
authorized_keys, pid file and the pod user's home (HOME), all in a temporary folder. Logins run
the real `llamafactory-cli` of the pod environment (.venv-pod) by its absolute path, as a pod's
would run its own.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lora-test", "-f", str(path)], check=True
    )
    return path


def setenv_line(env: dict[str, str]) -> str:
    """An sshd_config `SetEnv` line: every NAME=VALUE one quoted word (sshd splits on spaces)."""
    words = []
    for name, value in env.items():
        if "\n" in value or "\r" in value or "=" in name or not name:
            raise ValueError(f"sshd's SetEnv cannot carry {name!r}={value!r}")
        word = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
        words.append(f'"{word}"')
    return "SetEnv " + " ".join(words)


class Sshd:
    def __init__(
        self,
        root: Path,
        client_key: Path | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        authorized_keys: str | None = None,
    ):
        """`client_key`: authorize this existing key (its .pub beside it) instead of a new one;
        `env`: more variables for every login, after OMP_NUM_THREADS; `port`: listen there;
        `authorized_keys`: the authorized_keys file's text instead of client_key's .pub ("" lets
        nobody in)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host_key = keygen(root / "ssh_host_ed25519_key")
        self.client_key = client_key or keygen(root / "client_key")
        self.other_key = keygen(root / "unauthorized_key")  # a key the pod does not know
        if authorized_keys is None:
            authorized_keys = Path(f"{self.client_key}.pub").read_text()
        (root / "authorized_keys").write_text(authorized_keys)
        # The pod user's home: a fresh one, as on a new pod, not this machine's (whose ~/.bashrc
        # may start pyenv or conda: bash sources it for every command sshd runs).
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        os.chmod(root / "authorized_keys", 0o600)
        self.config = root / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "StrictModes no",  # tmp folders are not a home directory
                    "UsePAM no",
                    "LogLevel VERBOSE",
                    # One torch thread: on a 2-core CI machine two spinning OpenMP threads slow down ten
                    # times whenever anything else runs (the tests, snakemake, sshd itself).
                    setenv_line({"HOME": str(self.home), "OMP_NUM_THREADS": "1", **(env or {})}),
                    "",
                ]
            )
        )
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> Sshd:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server and cut the connections it has open, as a pod that goes down or off
        the network does: the client's shared (multiplexed) connection ends with them. What the
        logins started in sessions of their own (tmux, setsid: the training) runs on."""
        if self.proc and self.proc.poll() is None:
            sessions = self._connections()
            self.proc.terminate()
            self.proc.wait(timeout=10)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.proc = None

    def _connections(self) -> list[int]:
        """The per-connection sshd processes: the listener's children."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def accepted(self) -> int:
        """How many logins (SSH handshakes) the server has accepted since it was made."""
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def pod(self, tmp_path: Path, cli: str | os.PathLike, **extra) -> dict:
        """A `pods:` entry of the config that reaches this server."""
        return {
            "executor": "ssh",
            "host": "127.0.0.1",
            "port": self.port,
            "user": getpass.getuser(),
            "identity_file": str(self.client_key),
            "known_hosts": str(tmp_path / "known_hosts"),
            "remote_dir": str(tmp_path / "pod"),
            "llamafactory_cli": str(cli),
            "poll_seconds": 1,
            "reconnect_minutes": 3,
            **extra,
        }


def style_run_config(tmp: Path, pod: dict, tiny_model: Path, reference: bool = False, **overrides) -> Path:
    """A config with one run, `style`, training the tiny model on `pod` (e.g. Sshd.pod(...)).
    The reference evaluation after training (fidelity.reference, ~15 s here) only with
    `reference`: the tests that do not read it save that time."""
    from helpers.workflow import SAMPLE_DATA, write_config

    return write_config(
        tmp / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "testpod",
                    "overrides": overrides,
                    "fidelity": {"reference": reference},
                }
            },
            "pods": {"testpod": pod},
        },
    )
