"""Transfers cut off part-way, and a download that does not match the pod's sha256.

An upload or a download cut off mid-file leaves nothing a later step could take for complete,
and the next try finishes it; a file whose sha256 differs from the pod's never lands in
lora_adapters/ (so the conversion, whose input that folder is, never sees it).

Real rsync over the real test sshd. The pipeline's own code does each transfer (pod.launch.upload,
`remote_train fetch`), in a process of its own, with the one change that its rsync gets a
`--bwlimit` (a slow link), so that a file of a few tens of MB takes long enough to cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lora_style.training.launch import RunFiles
from lora_style.training.machines import make_executor
from lora_style.training.run_state import read_state
from lora_style.training.settings import PodSettings

pytestmark = [pytest.mark.slow]

RATE_KIB = 4096  # the slow link: 4 MiB/s
BIG = 48 * 2**20  # 12 s on it


# The pipeline's code, as a job runs it, with rsync rate-limited: argv[1] the rate in KiB/s,
# argv[2] what to run ("upload SETTINGS TRAIN_YAML DATA DATASET_INFO RUN_DIR", or "fetch ARGS...").
RUNNER = """
import sys
from pathlib import Path
from lora_style.training import executor, machines
from lora_style.training.settings import load_settings
plain = executor.SSHExecutor.rsync_argv
rate = int(sys.argv[1])
executor.SSHExecutor.rsync_argv = (
    lambda self, source, dest, bwlimit_kib=None, *rest:
    plain(self, source, dest, bwlimit_kib or rate or None, *rest))
if sys.argv[2] == "upload":
    from lora_style.training.launch import RunFiles, upload
    from lora_style.training.messages import PodError, Say
    settings, *paths, run_dir = sys.argv[3:]
    try:
        upload(machines.make_executor(load_settings(settings)), RunFiles.load("style", *paths),
               run_dir, say=Say("style"))
    except PodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print("uploaded", file=sys.stderr)
else:
    from lora_style.training import remote_train
    sys.exit(remote_train.main(sys.argv[2:]))
"""


def start(tmp: Path, rate: int, *args, cwd: Path | None = None) -> subprocess.Popen:
    out = open(tmp / f"runner-{time.monotonic_ns()}.out", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(rate), *map(str, args)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd or tmp,
        start_new_session=True,
        env=os.environ,
    )
    proc.out = out
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    proc.out.seek(0)
    return rc, proc.out.read()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for_partial(
    pattern_root: Path, glob: str, proc: subprocess.Popen, at_least: int = 4 * 2**20
) -> Path:
    """rsync's temporary file for a transfer under way, once it holds `at_least` bytes."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in pattern_root.glob(glob):
            try:
                if path.stat().st_size >= at_least:
                    return path
            except FileNotFoundError:
                continue
        if proc.poll() is not None:
            pytest.fail(
                f"the transfer ended ({proc.returncode}) before it could be cut:\n{finish(proc)[1][-3000:]}"
            )
        time.sleep(0.05)
    pytest.fail(f"no partial {glob} under {pattern_root}")


# ------------------------------------------------------------------------------ upload


def big_run_inputs(tmp: Path) -> list[Path]:
    """A run's three inputs, the data big enough to cut (its content is not read here)."""
    inputs = tmp / "inputs"
    inputs.mkdir()
    (inputs / "train.yaml").write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\ndataset: style_sft\n")
    line = json.dumps({"instruction": "Rewrite.", "input": "x" * 400, "output": "y" * 500}) + "\n"
    with open(inputs / "train.jsonl", "w") as handle:
        handle.write(line * (BIG // len(line)))
    (inputs / "dataset_info.json").write_text('{"style_sft": {"file_name": "train.jsonl"}}\n')
    return [inputs / "train.yaml", inputs / "train.jsonl", inputs / "dataset_info.json"]


def test_an_upload_cut_off_leaves_a_run_not_started_and_the_next_finishes_it(tmp_path, sshd):
    settings = sshd.pod(tmp_path, "/bin/true")
    paths = big_run_inputs(tmp_path)
    files = RunFiles.load("style", *map(str, paths))
    run_dir = tmp_path / "pod" / files.run_id

    proc = start(tmp_path, RATE_KIB, "upload", json.dumps(settings), *paths, run_dir)
    wait_for_partial(run_dir / "data", ".train.jsonl.*", proc)
    sshd.stop()  # the connection drops mid-file
    rc, said = finish(proc)
    sshd.start()
    assert rc == 1, said
    assert "error: the upload to pod " in said and "was cut off" in said, said[-2000:]
    assert "nothing was launched. Run snakemake again: it sends what is missing" in said

    # What is there now is no run: not launched, and no copy of the data that matches.
    state = read_state(
        make_executor(PodSettings.from_entry(settings), tmp_path), settings["remote_dir"], files.run_id
    )
    assert state.status == "new" and state.describe() == "not started"
    kept = run_dir / "data" / "train.jsonl"
    assert not kept.exists() or sha256(kept) != files.sha256["data/train.jsonl"]
    assert not (run_dir / "pid").exists() and not (run_dir / "attempts.log").exists()

    # The next try (the next submit) sends the rest and checks every file's sha256 there.
    rc, said = finish(start(tmp_path, 0, "upload", json.dumps(settings), *paths, run_dir))
    assert rc == 0, said
    assert sha256(run_dir / "data" / "train.jsonl") == files.sha256["data/train.jsonl"]
    assert not list((run_dir / "data").glob(".train.jsonl.*")), "no rsync leftovers"


# ---------------------------------------------------------------------------- download


def finished_run_on_pod(pod_dir: Path, run_id: str, adapter: bytes) -> Path:
    """A run folder as a finished training leaves it: one checkpoint, the logs, exit code 0."""
    run_dir = pod_dir / run_id
    ckpt = run_dir / "output" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(adapter)
    (ckpt / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}\n')
    state = json.dumps({"global_step": 10, "log_history": [{"step": 10, "eval_loss": 1.5}]})
    (ckpt / "trainer_state.json").write_text(state)
    (run_dir / "output" / "trainer_state.json").write_text(state)
    (run_dir / "output" / "trainer_log.jsonl").write_text('{"current_steps": 10, "total_steps": 10}\n')
    (run_dir / "attempts.log").write_text("start 1 0\nend 2 0\n")
    (run_dir / "exit_code").write_text("0\n")
    return run_dir


def fetch_args(tmp: Path, settings: dict, run_id: str) -> list[str]:
    (tmp / "launch.json").write_text(json.dumps({"run": "style", "run_id": run_id}))
    (tmp / "finished.json").write_text(json.dumps({"status": "finished"}))
    return [
        "fetch",
        "--run",
        "style",
        "--pod-settings",
        json.dumps(settings),
        "--launch",
        "launch.json",
        "--finished",
        "finished.json",
        "--adapter-dir",
        "lora_adapters/style_peft",
        "--summary",
        "results/style/train/training_summary.json",
        "--trainer-state",
        "results/style/train/trainer_state.json",
    ]


@pytest.fixture
def big_fetch(tmp_path, sshd):
    """A finished run with a 48 MB adapter on the pod, and the fetch command line for it."""
    settings = sshd.pod(tmp_path, "/bin/true")
    run_id = "style-0123456789ab"
    adapter = os.urandom(BIG)
    run_dir = finished_run_on_pod(tmp_path / "pod", run_id, adapter)
    return {
        "args": fetch_args(tmp_path, settings, run_id),
        "run_dir": run_dir,
        "sha256": hashlib.sha256(adapter).hexdigest(),
    }


def landed(tmp: Path) -> Path:
    return tmp / "lora_adapters" / "style_peft"


def leftovers(tmp: Path) -> list[Path]:
    return list((tmp / "lora_adapters").glob(".style_peft.*.partial"))


def test_a_download_killed_mid_file_lands_nothing_and_the_next_fetch_finishes(tmp_path, big_fetch):
    proc = start(tmp_path, RATE_KIB, *big_fetch["args"])
    wait_for_partial(tmp_path / "lora_adapters", ".style_peft.*.partial/style_peft/.adapter_model*", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the laptop dies: no clean-up at all
    finish(proc)
    # Only a hidden staging folder: no adapter folder, no summary, nothing to convert.
    assert not landed(tmp_path).exists()
    assert not (tmp_path / "results/style/train/training_summary.json").exists()
    assert len(leftovers(tmp_path)) == 1

    rc, said = finish(start(tmp_path, 0, *big_fetch["args"]))
    assert rc == 0, said
    assert "left by a download that was cut off" in said
    assert sha256(landed(tmp_path) / "adapter_model.safetensors") == big_fetch["sha256"]
    assert leftovers(tmp_path) == []
    summary = json.loads((tmp_path / "results/style/train/training_summary.json").read_text())
    assert summary["sha256"]["adapter_model.safetensors"] == big_fetch["sha256"]


def test_a_connection_lost_mid_download_is_ridden_out_and_verified(tmp_path, sshd, big_fetch):
    proc = start(tmp_path, RATE_KIB, *big_fetch["args"])
    wait_for_partial(tmp_path / "lora_adapters", ".style_peft.*.partial/style_peft/.adapter_model*", proc)
    sshd.stop()
    time.sleep(3)
    assert not landed(tmp_path).exists() or not any(landed(tmp_path).iterdir())
    sshd.start()
    rc, said = finish(proc)
    assert rc == 0, said
    assert "lost contact with the pod while downloading adapter_model.safetensors" in said
    assert sha256(landed(tmp_path) / "adapter_model.safetensors") == big_fetch["sha256"]
    assert "adapter_model.safetensors (50331648 bytes, sha256" in said and "verified" in said
    assert leftovers(tmp_path) == []


def test_a_download_that_differs_from_the_pods_sha256_never_lands(tmp_path, sshd):
    """The pod's file changes under the download (a disk going bad, something rewriting it): its
    sha256 there and what arrives never agree, so nothing lands for the conversion to take."""
    settings = sshd.pod(tmp_path, "/bin/true")
    run_id = "style-ba9876543210"
    run_dir = finished_run_on_pod(tmp_path / "pod", run_id, os.urandom(2**20))
    target = run_dir / "output" / "checkpoint-10" / "adapter_model.safetensors"
    stop = threading.Event()

    def rewrite():
        n = 0
        while not stop.is_set():
            n += 1
            tmp = target.with_name(".rewrite")
            tmp.write_bytes(os.urandom(2**20) + str(n).encode())
            os.replace(tmp, target)
            time.sleep(0.005)

    thread = threading.Thread(target=rewrite, daemon=True)
    thread.start()
    try:
        rc, said = finish(start(tmp_path, 0, *fetch_args(tmp_path, settings, run_id)))
    finally:
        stop.set()
        thread.join()
    assert rc == 1, said
    assert "adapter_model.safetensors from pod " in said
    assert "arrived damaged twice" in said and "run again" in said
    assert not landed(tmp_path).exists()
    assert not (tmp_path / "results/style/train/training_summary.json").exists()
    assert leftovers(tmp_path) == []
