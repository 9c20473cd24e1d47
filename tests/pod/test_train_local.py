"""The `local` executor (what `make demo` uses): the same submit -> wait -> fetch, no SSH; a failed
training, and a budget. Its normal run, and the standalone preflight target that checks a pod
and launches nothing, are the demo's (tests/pod/test_demo.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers.processes import first_checkpoint, hold_until_budget_cut
from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, snakemake, snakemake_argv, write_config

pytestmark = [pytest.mark.slow, pytest.mark.pod]


def test_a_failed_training_is_reported_and_not_relaunched_by_a_rerun(tmp_path, tiny_model):
    """A mistake in the config fails once, with the remote log's tail; rerunning costs nothing."""
    config = write_config(
        tmp_path / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "here",
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "overrides": {"lora_target": "no_such_proj"},
                }
            },
            "pods": {
                "here": {
                    "executor": "local",
                    "remote_dir": "pod",
                    "llamafactory_cli": str(LLAMAFACTORY_CLI),
                    "poll_seconds": 1,
                }
            },
        },
    )
    work = tmp_path / "work"
    first = snakemake(work, "lora_adapters/style_peft", configfile=config, check=False)
    assert first.returncode != 0
    assert "ended without finishing: failed with exit status 1" in first.stderr
    assert "no_such_proj" in first.stderr  # the tail of the remote log
    assert "hint: " in first.stderr
    (run_dir,) = [p for p in (work / "pod").iterdir() if not p.name.startswith(".")]  # .train.lock
    second = snakemake(work, "lora_adapters/style_peft", configfile=config, check=False)
    assert second.returncode != 0 and "failed with exit status 1" in second.stderr
    assert (run_dir / "attempts.log").read_text().count("start ") == 1


def test_a_budget_on_a_fixed_pod_cuts_the_training_and_fetches_the_best_so_far(tmp_path, tiny_model):
    """max_usd at gpu_hourly_usd: the pod's guard stops the training, the laptop fetches."""
    config = write_config(
        tmp_path / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "here",
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "overrides": {"max_steps": 2000, "save_steps": 10, "eval_steps": 10},
                }
            },
            "pods": {
                "here": {
                    "executor": "local",
                    "remote_dir": "pod",
                    "poll_seconds": 1,
                    "llamafactory_cli": str(LLAMAFACTORY_CLI),
                    "gpu_hourly_usd": 36.0,
                    "max_usd": 0.2,
                }
            },  # 20 s of training
        },
    )
    work = tmp_path / "work"
    work.mkdir()
    with open(tmp_path / "snakemake.out", "w") as out:
        proc = subprocess.Popen(
            snakemake_argv(work, "lora_adapters/style_peft", configfile=config),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    # Held after its first checkpoint: the budget's 20 s pass without the CPU training on.
    hold_until_budget_cut(first_checkpoint(work / "pod", proc))
    assert proc.wait(timeout=300) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    said = (tmp_path / "snakemake.out").read_text()
    summary = json.loads((work / "lora_adapters/style_peft/training_summary.json").read_text())
    assert summary["cut_by_budget"] is True and summary["best_step"] % 10 == 0
    assert 20 <= summary["gpu_time"]["wall_seconds"] < 60
    assert summary["gpu_time"]["usd"] >= 0.2
    assert "stopped by its budget" in said
    (run_dir,) = (work / "pod").glob("style-*")
    assert "budget of 20s reached" in (work / "pod" / "guard.log").read_text()
    assert (run_dir / "budget_cut").exists()
