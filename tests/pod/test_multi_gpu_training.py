"""Several GPUs on one pod, exercised for real on this machine's CPU: the tiny profile trains with two
processes under LLaMA-Factory's torchrun (FORCE_TORCHRUN=1 NPROC_PER_NODE=2, gloo), through the
same run.sh and the local executor, and resumes after the whole training is killed. DeepSpeed is
not installed on the CPU side (its CPU accelerator needs Intel's extension and oneCCL), so the
two-process training is plain DDP. What needs no training (the processes, preflight, the per-GPU
estimate, DeepSpeed's config in the run folder) is tests/graph/test_multi_gpu.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.processes import process_tree
from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, snakemake, snakemake_argv, write_config

ADAPTER = "lora_adapters/style_peft"


# ------------------------------------------------------------ two processes on this CPU, for real


def two_process_config(tmp_path: Path, tiny_model: Path, **overrides) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "here",
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "overrides": overrides,
                }
            },
            "pods": {
                "here": {
                    "executor": "local",
                    "remote_dir": "pod",
                    "processes": 2,
                    "llamafactory_cli": str(LLAMAFACTORY_CLI),
                    "poll_seconds": 1,
                }
            },
        },
    )


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def trainer_processes(run_dir: Path) -> list[int]:
    """Trainer processes working in the run folder: llamafactory-cli, torchrun and the ranks
    (llamafactory/launcher.py), by their working folder and command line."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if Path(os.readlink(cwd)) != run_dir.resolve():
                continue
            cmdline = (cwd.parent / "cmdline").read_bytes()
        except OSError:
            continue
        program = cmdline.split(b"\0", 1)[0]
        if b"python" in program and (b"torchrun" in cmdline or b"llamafactory" in cmdline):
            found.append(int(cwd.parent.name))  # (not run.sh, nor tmux: their arguments name the cli)
    return found


@pytest.mark.slow
@pytest.mark.pod
def test_two_processes_train_and_resume_from_the_last_checkpoint_after_a_kill(tmp_path, tiny_model):
    """The tiny profile trains with two processes under LLaMA-Factory's torchrun. llamafactory-cli
    is killed mid-training (the OOM killer's pick, a `kill -9`; the guard's budget stop signals it
    too). torchrun and its two workers must not train on unseen: run.sh stops them, records the
    kill, and the next snakemake call resumes from the newest complete checkpoint with two
    processes again, to the end."""
    config = two_process_config(tmp_path, tiny_model, max_steps=100, save_steps=25, eval_steps=25)
    work = tmp_path / "work"
    work.mkdir()
    out = open(tmp_path / "first.out", "w")
    first = subprocess.Popen(
        snakemake_argv(work, ADAPTER, configfile=config),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and first.poll() is None:
        dirs = (
            [d for d in (work / "pod").glob("style-*") if (d / "run.sh").exists()]
            if (work / "pod").exists()
            else []
        )
        if dirs and len(complete(dirs[0])) >= 2:
            run_dir = dirs[0]
            break
        time.sleep(0.2)
    assert run_dir is not None, (tmp_path / "first.out").read_text()[-3000:]
    run_sh = int((run_dir / "pid").read_text())
    tree = process_tree(run_sh)
    assert len(tree) >= 5, tree  # run.sh, llamafactory-cli, torchrun, 2 workers
    workers = trainer_processes(run_dir)
    assert len(workers) == 4, workers  # llamafactory-cli, torchrun and both ranks
    (cli,) = [pid for pid in tree if parent(pid) == run_sh]  # run.sh's one child
    assert b"llamafactory-cli" in Path(f"/proc/{cli}/cmdline").read_bytes()
    os.kill(cli, signal.SIGKILL)
    first.wait(timeout=180)
    said = (tmp_path / "first.out").read_text()
    assert (run_dir / "exit_code").read_text().strip() == "137"
    assert trainer_processes(run_dir) == [], "torchrun or a worker outlived llamafactory-cli"
    assert first.returncode != 0 and "ended without finishing" in said
    assert "preflight: ok   GPUs: 2 CPU processes (gloo) under torchrun" in said
    last = max(complete(run_dir))  # (a save may have finished meanwhile)
    assert f"resumes from checkpoint-{last}" in said

    snakemake(work, ADAPTER, configfile=config)
    assert (run_dir / "train.env").read_text().splitlines()[1:] == [
        "NPROC_PER_NODE=2",
        "FORCE_TORCHRUN=1",
        "ACCELERATE_TORCH_DEVICE=cpu",
    ]
    assert json.loads((run_dir / "run.json").read_text())["processes"] == 2
    attempts = [line.split() for line in (run_dir / "attempts.log").read_text().splitlines()]
    starts = [a for a in attempts if a[0] == "start"]
    assert len(starts) == 2 and starts[1][2] == str(last)
    log = (run_dir / "train.log").read_text()
    # LLaMA-Factory's launcher, then one trainer per rank, each in a world of two, on the CPU.
    assert log.count("Initializing 2 distributed tasks at: 127.0.0.1:") == 2
    for rank in (0, 1):
        assert f"Process rank: {rank}, world size: 2, device: cpu, distributed training: True" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log  # 2 x 2
    assert "Resuming training from checkpoint with epoch" in log and f"global step {last}" in log
    assert (run_dir / "exit_code").read_text().strip() == "0"
    # Each rank saved its own random state into the checkpoints: the resume restored both.
    assert sorted(p.name for p in (run_dir / f"output/checkpoint-{last}").glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    assert json.loads((run_dir / "output/trainer_state.json").read_text())["global_step"] == 100
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    assert summary["total_steps"] == 100 and summary["selected_by"] == "min_eval_loss"
    assert (work / ADAPTER / "adapter_model.safetensors").read_bytes() == (
        run_dir / f"output/checkpoint-{summary['best_step']}/adapter_model.safetensors"
    ).read_bytes()
    assert trainer_processes(run_dir) == [], "no trainer left behind"


def complete(run_dir: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in (run_dir / "output").glob("checkpoint-*")
        if (p / "trainer_state.json").exists()
    )
