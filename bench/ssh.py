"""The SSH rows of `make bench`: one short training through the graph against a real sshd on
127.0.0.1 (tests/helpers/sshd.py) with real LLaMA-Factory on the tiny model, and what it cost in
connections and bytes. Measured from outside src/lora_style/training/, so it holds whatever that does:

- SSH handshakes: the server's own log ("Accepted publickey", sshd at LogLevel VERBOSE), per step;
- bytes on the wire: a counting TCP relay between the client and sshd (everything, SSH included);
- bytes rsync moved: rsync's own totals, from a `--log-file` that a wrapper first on PATH adds
  (the wrapper changes nothing else: same arguments, same output).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import inputs
from measure import python, say
from rows import Row

REPO = inputs.REPO
POD_CLI = Path(os.environ.get("LORA_POD_VENV", REPO / ".venv-pod")) / "bin" / "llamafactory-cli"


class Relay:
    """A TCP relay 127.0.0.1:port -> sshd that counts connections and bytes each way."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = self.up = self.down = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, "down"), daemon=True).start()

    def _pipe(self, src, dst, direction):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.connections, self.up, self.down


class Counters:
    """Handshakes, relay counts and rsync totals, read before and after a step."""

    def __init__(self, sshd, relay: Relay, rsync_log: Path):
        self.sshd, self.relay, self.rsync_log = sshd, relay, rsync_log

    def read(self) -> dict:
        rsync = self.rsync_log.read_text(errors="replace") if self.rsync_log.exists() else ""
        # rsync's closing line; with --stats its numbers carry thousands separators.
        totals = [
            (int(re.sub(r"\D", "", sent)), int(re.sub(r"\D", "", received)))
            for sent, received in re.findall(r"sent ([\d,.]+) bytes\s+received ([\d,.]+) bytes", rsync)
        ]
        conns, up, down = self.relay.snapshot()
        return {
            "handshakes": self.sshd.accepted(),
            "tcp": conns,
            "up": up,
            "down": down,
            "rsyncs": len(totals),
            "rsync_sent": sum(s for s, _ in totals),
            "rsync_received": sum(r for _, r in totals),
        }

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        return {k: after[k] - before[k] for k in before}


def _rsync_wrapper(folder: Path, log: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    real = shutil.which("rsync")
    if not real:
        raise RuntimeError("rsync is not installed")
    wrapper = folder / "rsync"
    wrapper.write_text(f'#!/bin/sh\nexec {real} --log-file={log} "$@"\n')
    wrapper.chmod(0o755)
    return folder


def _config(tmp: Path, pod: dict, data: Path, tiny: Path, **overrides) -> Path:
    import yaml

    path = tmp / "config.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "runs": {
                    "style": {
                        "data": str(data),
                        "base_model": str(tiny),
                        "profile": "tiny_cpu",
                        "pod": "testpod",
                        "overrides": overrides,
                    }
                },
                "pods": {"testpod": pod},
            },
            sort_keys=False,
        )
    )
    return path


def _stop_training(work: Path) -> None:
    """The trainings this bench launched on the test pod: their tmux server, else their pid."""
    launch = work / "results" / "style" / "train" / "launch.json"
    if not launch.exists():
        return
    record = json.loads(launch.read_text())
    if record.get("session"):
        subprocess.run(["tmux", "-L", record["session"], "kill-server"], capture_output=True)
    elif record.get("pid"):
        try:
            os.kill(int(record["pid"]), 15)
        except (OSError, ValueError):
            pass


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def ssh_rows(tmp: Path) -> list[Row]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.sshd import Sshd

    sshd = Sshd(tmp / "sshd").start()
    relay = Relay(sshd.port)
    rsync_log = tmp / "rsync.log"
    env = {**os.environ, "PATH": f"{_rsync_wrapper(tmp / 'bin', rsync_log)}:{os.environ['PATH']}"}
    counters = Counters(sshd, relay, rsync_log)
    works = []
    try:
        say("ssh: building the tiny model (no hub)")
        tiny = tmp / "tiny-qwen2"
        subprocess.run(
            python(
                str(REPO / "scripts" / "make_tiny_model.py"),
                "--corpus",
                str(inputs.SAMPLE),
                "--output",
                str(tiny),
            ),
            check=True,
            capture_output=True,
        )
        pod = {**sshd.pod(tmp, POD_CLI), "port": relay.port}

        def step(work: Path, config: Path, *targets: str) -> dict:
            before = counters.read()
            cmd = python(
                "-m",
                "snakemake",
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",
                str(work),
                "--cores",
                "2",
                f"--configfile={config}",
                *targets,
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"snakemake {' '.join(targets)} failed:\n{proc.stderr[-4000:]}")
            return Counters.delta(before, counters.read())

        # One short training: submit (preflight included), wait, fetch, each its own call.
        work = tmp / "train"
        works.append(work)
        config = _config(tmp / "train", pod, inputs.SAMPLE, tiny, max_steps=10)
        say("ssh: one short training, submit / wait / fetch")
        submit = step(work, config, "results/style/train/launch.json")
        wait = step(work, config, "results/style/train/finished.json")
        fetch = step(work, config, "lora_adapters/style_peft")
        dry = step(work, config, "-n", "lora_adapters/style_peft")
        adapter = work / "lora_adapters" / "style_peft"
        # What fetch must bring: the chosen checkpoint's adapter files plus the logs (the summary
        # is written here).
        payload = sum(
            p.stat().st_size for p in adapter.iterdir() if p.is_file() and p.name != "training_summary.json"
        )

        # An upload after one line of a 10 MB data file changed.
        say("ssh: upload of a 10 MB data file, then again after one line changed")
        data = tmp / "upload" / "train_sft.jsonl"
        size = 0
        lines = 13_000
        while size < 10_000_000:
            size = inputs.write_jsonl(data, lines, seed=5)
            lines += 1000
        upwork = tmp / "upload" / "work"
        works.append(upwork)
        upconfig = _config(tmp / "upload", pod, data, tiny, max_steps=2, max_samples=20)
        first = step(upwork, upconfig, "results/style/train/launch.json")
        _stop_training(upwork)
        text = data.read_text(encoding="utf-8").splitlines(keepends=True)
        middle = len(text) // 2
        row = json.loads(text[middle])
        row["output"] = row["output"] + " One line changed."
        text[middle] = json.dumps(row, ensure_ascii=False) + "\n"
        data.write_text("".join(text), encoding="utf-8")
        second = step(upwork, upconfig, "results/style/train/launch.json")
    finally:
        for work in works:
            _stop_training(work)
        sshd.stop()

    def hs(d: dict) -> str:
        return f"{d['handshakes']} ({d['rsyncs']} rsync)"

    total = submit["handshakes"] + wait["handshakes"] + fetch["handshakes"]
    return [
        Row(
            "SSH handshakes: submit (preflight, upload, launch) / wait / fetch",
            f"{hs(submit)} / {hs(wait)} / {hs(fetch)}; {total} in all",
            "1 per step",
            None,
            "1 per submit, 1 per fetch",
            met=submit["handshakes"] <= 1 and fetch["handshakes"] <= 1,
        ),
        Row(
            "connections opened by a dry run of the trained graph",
            f"{dry['handshakes']}",
            "0",
            None,
            "none",
            met=dry["handshakes"] == 0,
        ),
        Row(
            "bytes downloaded by fetch",
            f"{_human(fetch['rsync_received'])} by rsync; {_human(fetch['down'])} on the wire (SSH included)",
            f"adapter files + logs {_human(payload)}",
            fetch["rsync_received"] / payload,
            "<= 1.05x",
            met=fetch["rsync_received"] <= 1.05 * payload,
        ),
        Row(
            "bytes uploaded after one line of a 10 MB data file changed",
            f"{_human(second['rsync_sent'])} by rsync; {_human(second['up'])} on the wire "
            f"(first upload: {_human(first['rsync_sent'])})",
            f"the file {_human(size)}",
            second["rsync_sent"] / size,
            "rsync's delta, not the whole file",
            met=second["rsync_sent"] < 0.2 * size,
        ),
    ]
