"""Fixtures: the pod (a real sshd), tripwire binaries, the tiny model, the sample data; and the
order in which pytest-xdist hands out the test files. Helpers live in tests/helpers/."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

# The jobs of every snakemake a test starts run `python -m lora_style...` with the `python` on
# PATH: this interpreter's (.venv, where the package is installed), as with an activated venv
# or the Makefile.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

# No test reaches the Hugging Face hub, here or in a job it starts: a run whose base_model is a
# hub id validates with character counts, as without network. Set before anything imports
# huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

# One thread per process: the suite runs four workers on two cores, and a torch or OpenBLAS with
# two threads on a loaded machine spins waiting for the one not scheduled (the demo's pretraining
# took 54 CPU-seconds instead of 20 beside two busy processes). Snakemake sets these per job from
# its threads, which the tests cap at 1 (helpers/workflow.py: --max-threads); the sshd pods and the
# Slurm cluster set OMP_NUM_THREADS=1 themselves.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

# Ctrl-C must reach the snakemake runs the interruption tests start. A shell that runs a command in
# the background (`make test &`, some CI runners) starts it with SIGINT ignored, and an ignored
# signal stays ignored in every child; a handler does not survive exec, so with one here each
# child starts with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The tmux servers that detached trainings start on this machine (the local executor) live in a
# folder of this test session's, one per pytest-xdist worker: two workers training the same run
# (same run id, so the same server name) never meet, and no test touches the user's own tmux.
os.environ["TMUX_TMPDIR"] = tempfile.mkdtemp(prefix=f"tmux-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")

# Hugging Face's caches (the datasets cache a local training writes, the hub cache) in a folder of
# this session's too: nothing lands in the user's ~/.cache/huggingface, and no test can pass on a
# model the user happens to have cached. The sshd pods have a home of their own (helpers/sshd.py).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix=f"hf-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)

from helpers.sshd import Sshd  # noqa: E402
from helpers.workflow import SAMPLE_DATA  # noqa: E402

# The longest test files first (a `make test` run's seconds per file, on 2 cores, beside each),
# then the rest by tier, heaviest tier first (pod, graph, unit): pytest-xdist (--dist loadfile
# --no-loadscope-reorder) hands out whole files in collection order, so no worker is left at the
# end alone with a long one. A file missing here only runs later; the order changes no test.
LONGEST_FIRST = (
    "pod/test_runpod.py",  # 360 s
    "pod/test_slurm.py",  # 340 s
    "pod/test_demo.py",  # 180 s
    "pod/test_faults_pod.py",  # 150 s
    "pod/test_train_interrupts.py",  # 120 s
    "pod/test_early_stopping.py",  # 110 s
    "pod/test_train_ssh.py",  # 100 s
    "pod/test_multi_gpu_training.py",  # 70 s
    "pod/test_pod_sessions.py",  # 60 s
    "graph/test_mlx_workflow.py",  # 60 s
    "pod/test_hostile_input.py",  # 55 s
    "pod/test_train_local.py",  # 45 s
    "pod/test_faults_transfers.py",  # 30 s
    "pod/test_runpod_rent.py",  # 25 s
    "pod/test_generate_prompt.py",  # 25 s
)


def pytest_collection_modifyitems(items):
    tests = Path(__file__).parent
    tiers = ("pod", "graph", "unit")

    def rank(item) -> tuple[int, int]:
        path = Path(str(item.path)).relative_to(tests).as_posix()
        if path in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(path)
        tier = path.split("/", 1)[0]
        return 1, tiers.index(tier) if tier in tiers else len(tiers)

    items.sort(key=rank)  # stable: the others keep their order


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 with throwaway keys: the pod, for one test module."""
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def tripwire(tmp_path):
    """`ssh` and `rsync` on PATH that only record that they were called: a dry run must not."""
    bin_dir = tmp_path / "tripwire-bin"
    bin_dir.mkdir()
    calls = tmp_path / "tripwire-calls"
    for tool in ("ssh", "rsync", "scp"):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> '{calls}'\nexit 255\n")
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with a BPE tokenizer trained on the sample data (no hub)."""
    from lora_style.tiny_model import make_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    return make_tiny_model([str(SAMPLE_DATA)], str(out))


@pytest.fixture
def sample_rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def copy_sample(tmp_path):
    """Copy the sample data into tmp_path/<rel> and return the path."""

    def _copy(rel: str = "data/train_sft.jsonl") -> Path:
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_DATA, dest)
        return dest

    return _copy
