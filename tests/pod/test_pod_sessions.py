"""One pod, a whole session: connections, secrets, a second run, a changed host key, an upload
after a data edit (issues 11 and 12), on the real sshd with real LLaMA-Factory.

- every job that talks to the pod (submit, wait, fetch) makes one SSH handshake, and leaves no
  connection or control socket behind;
- HF_TOKEN reaches the training's environment, and no command line, file or log;
- two runs on one pod never train at the same time: the second waits, and says so;
- a changed host key stops at once instead of being retried for reconnect_minutes;
- after a one-line edit of a data file, rsync sends only the changes against the earlier upload.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lora_style.training import follow, launch
from lora_style.training.executor import SSHExecutor
from lora_style.training.messages import PodError, Unreachable
from lora_style.training.settings import PodSettings

from helpers.sshd import Sshd
from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, snakemake_argv, write_config

pytestmark = [pytest.mark.slow, pytest.mark.pod]

TOKEN = "hf_TESTtoken0123456789abcdefSECRET"
API_KEY = "rpa_TESTapikey0123456789SECRET"
RUNS = ("style", "style2")


def proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


def all_command_lines() -> list[str]:
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(path.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
        except OSError:
            pass
    return lines


class Watcher(threading.Thread):
    """While the graph runs: every command line on the machine, and the trainers' environments."""

    def __init__(self, pod_dir: Path):
        super().__init__(daemon=True)
        self.pod_dir, self.stop = pod_dir, threading.Event()
        self.cmdlines_with_token: list[str] = []
        self.trainer_token: dict[str, str | None] = {}
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples += 1
            self.cmdlines_with_token += [c for c in all_command_lines() if TOKEN in c]
            for pid_file in self.pod_dir.glob("*/pid"):
                try:
                    pid = int(pid_file.read_text())
                except (OSError, ValueError):
                    continue
                env = proc_env(pid)
                if env:
                    self.trainer_token[pid_file.parent.name] = env.get("HF_TOKEN")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def session(tmp_path_factory, tiny_model):
    """Two runs on one pod (its own sshd, so its logins are these runs' alone) in one snakemake
    call, with HF_TOKEN and a RunPod key in the environment."""
    tmp = tmp_path_factory.mktemp("session")
    sshd = Sshd(tmp / "sshd").start()
    data2 = tmp / "style2.jsonl"
    data2.write_text("".join(SAMPLE_DATA.read_text().splitlines(keepends=True)[:40]))
    pod = sshd.pod(tmp, LLAMAFACTORY_CLI)
    config = write_config(
        tmp / "config.yaml",
        {
            "runs": {
                run: {
                    "data": str(SAMPLE_DATA if run == "style" else data2),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "testpod",
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "overrides": {"max_steps": 20},
                }
                for run in RUNS
            },
            "pods": {"testpod": pod},
        },
    )
    work, private_tmp = tmp / "work", tmp / "private-tmp"
    private_tmp.mkdir()
    watcher = Watcher(tmp / "pod")
    watcher.start()
    env = {**os.environ, "HF_TOKEN": TOKEN, "RUNPOD_API_KEY": API_KEY, "TMPDIR": str(private_tmp)}
    started = time.monotonic()
    proc = subprocess.run(
        snakemake_argv(work, *(f"lora_adapters/{run}_peft" for run in RUNS), configfile=config),
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    watcher.stop.set()
    watcher.join()
    sshd.stop()
    assert proc.returncode == 0, proc.stderr[-6000:]
    run_dirs = {
        run: tmp / "pod" / json.loads((work / f"results/{run}/train/launch.json").read_text())["run_id"]
        for run in RUNS
    }
    return {
        "tmp": tmp,
        "work": work,
        "proc": proc,
        "sshd": sshd,
        "watcher": watcher,
        "run_dirs": run_dirs,
        "private_tmp": private_tmp,
        "seconds": time.monotonic() - started,
    }


def test_one_ssh_handshake_per_pod_job_and_nothing_left_open(session):
    # submit, wait and fetch for each of the two runs: six jobs, six logins (31 for one run before
    # the jobs shared a connection: tests/pod/test_pod_sessions.py's docstring, issue 12).
    assert session["sshd"].accepted() == 3 * len(RUNS)
    # Each job's control socket folder is gone, and no ssh master outlived the graph.
    assert list(session["private_tmp"].iterdir()) == []
    masters = [c for c in all_command_lines() if "ssh" in c and str(session["private_tmp"]) in c]
    assert masters == []


def test_the_token_reaches_the_training_and_nothing_else(session):
    watcher = session["watcher"]
    assert watcher.samples > 20
    # The training's own environment has it (a gated base model would download) ...
    assert watcher.trainer_token == {d.name: TOKEN for d in session["run_dirs"].values()}
    # ... no command line on the machine ever showed it (ps) ...
    assert watcher.cmdlines_with_token == []
    # ... and no file the graph or the pod wrote holds it (results, logs, YAML, launch records,
    # the run folders, known_hosts), nor the RunPod key.
    leaked = []
    for root in (session["work"], session["tmp"] / "pod", session["tmp"] / "known_hosts"):
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if TOKEN.encode() in data or API_KEY.encode() in data:
                    leaked.append(str(path))
    assert leaked == []
    # The identity file's path may appear; its content never.
    key = (session["sshd"].client_key).read_text().splitlines()[1].encode()
    assert not [p for p in session["work"].rglob("*") if p.is_file() and key in p.read_bytes()]


def test_two_runs_on_one_pod_take_turns(session):
    spans = {}
    for run, run_dir in session["run_dirs"].items():
        lines = (run_dir / "attempts.log").read_text().split()
        spans[run] = (int(lines[1]), int(lines[5]))  # start <t> <step> / end <t> <rc>
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert b_start >= a_end, f"the trainings overlapped: {spans}"
    waited = [run for run, d in session["run_dirs"].items() if "waiting:" in (d / "train.log").read_text()]
    assert len(waited) == 1, "the second run waited for the first, and its log says so"
    other = next(d.name for r, d in session["run_dirs"].items() if r != waited[0])
    wait_log = (session["work"] / f"logs/{waited[0]}/wait_training.log").read_text()
    assert f"waiting for the GPU: {other} is training on" in wait_log


def test_a_changed_host_key_stops_at_once(tmp_path):
    sshd = Sshd(tmp_path / "sshd").start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.other_key.with_suffix('.pub').read_text()}")
        ex = SSHExecutor(
            PodSettings.from_entry(
                {**sshd.pod(tmp_path, LLAMAFACTORY_CLI, known_hosts=str(known)), "name": "testpod"}
            ),
            tmp_path,
        )
        settings = PodSettings(reconnect_minutes=60)
        said: list[str] = []
        started = time.monotonic()
        with pytest.raises(PodError) as caught:
            follow.with_reconnect(lambda: ex.sh("true"), settings, said.append, "following")
        assert time.monotonic() - started < 30, "not retried for reconnect_minutes"
        assert not isinstance(caught.value, Unreachable)
        assert "host key is not the one remembered" in str(caught.value)
        assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known}" in str(caught.value)
        assert said == []  # no "lost contact ... retrying"
        ex.close()
    finally:
        sshd.stop()


def test_an_upload_after_a_one_line_edit_sends_only_the_change(tmp_path, sshd):
    """10 MB of data, one line changed: the new run folder's upload is rsync's delta against the
    earlier one (prepare_upload.sh finds it; --copy-dest), and arrives intact."""
    ex = SSHExecutor(
        PodSettings.from_entry({**sshd.pod(tmp_path, LLAMAFACTORY_CLI), "name": "testpod"}), tmp_path
    )
    lines = SAMPLE_DATA.read_text().splitlines(keepends=True)
    data = tmp_path / "train.jsonl"
    with data.open("w") as out:
        while out.tell() < 10 * 2**20:
            out.writelines(lines)
    files = {"train_yaml": tmp_path / "train.yaml", "dataset_info": tmp_path / "dataset_info.json"}
    files["train_yaml"].write_text("stage: sft\n")
    files["dataset_info"].write_text("{}\n")
    said: list[str] = []

    def upload() -> tuple[int, Path]:
        run = launch.RunFiles.load("style", files["train_yaml"], data, files["dataset_info"])
        sent = ex.bytes_sent
        launch.upload(ex, run, f"{tmp_path}/pod/{run.run_id}", PodSettings(), said.append)
        return ex.bytes_sent - sent, tmp_path / "pod" / run.run_id

    first, _ = upload()
    assert first > 10 * 2**20  # the whole file, the first time
    text = data.read_text()
    data.write_text(text.replace(lines[3], lines[3].replace("the", "THE", 1), 1))
    second, second_dir = upload()
    assert second < 0.05 * 10 * 2**20, f"{second:,} bytes sent for a one-line edit"
    assert (second_dir / "data/train.jsonl").read_bytes() == data.read_bytes()
    assert any("only the changes against" in line for line in said), said
    ex.close()


def test_an_edit_of_the_same_size_and_second_is_sent_not_taken_from_the_basis(tmp_path, sshd):
    """rsync's quick check matches on size and mtime to the second: an edit that keeps the size,
    staged within the second of the earlier upload, would land the basis's old copy (CI saw the
    sha256 check catch it, and a rerun could not fix it). Uploads go through the delta always."""
    ex = SSHExecutor(
        PodSettings.from_entry({**sshd.pod(tmp_path, LLAMAFACTORY_CLI), "name": "testpod"}), tmp_path
    )
    stage = tmp_path / "stage"
    (stage / "data").mkdir(parents=True)
    (tmp_path / "pod").mkdir()  # the pod's runs folder (loopback)
    data = stage / "data/train.jsonl"
    old = b'{"instruction": "write", "output": "the night"}\n' * 20_000
    data.write_bytes(old)
    stamp = int(time.time())
    os.utime(data, (stamp, stamp))
    ex.put(stage, f"{tmp_path}/pod/style-a")
    new = old.replace(b"the night", b"THE night", 1)
    data.write_bytes(new)
    os.utime(data, (stamp, stamp))  # same size, same second
    sent = ex.bytes_sent
    ex.put(stage, f"{tmp_path}/pod/style-b", basis=f"{tmp_path}/pod/style-a")
    assert (tmp_path / "pod/style-b/data/train.jsonl").read_bytes() == new
    assert ex.bytes_sent - sent < len(old) // 20  # still only the change
    ex.close()
