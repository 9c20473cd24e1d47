"""Fixtures only: the pod (a real sshd), tripwire binaries, the tiny model, the sample data.
Helpers live in tests/helpers/ (workflow.py, sshd.py, mlx.py)."""

from __future__ import annotations

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

from helpers.sshd import Sshd  # noqa: E402
from helpers.workflow import SAMPLE_DATA  # noqa: E402


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
