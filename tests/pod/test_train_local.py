"""The `local` executor (what `make demo` uses): the same submit -> wait -> fetch, no SSH.

Also the standalone preflight target, which checks a pod and launches nothing.
"""

from __future__ import annotations

import json

import pytest

from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.pod]


def test_local_executor_trains_the_tiny_profile_on_this_machine(tmp_path, tiny_model):
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
    snakemake(work, "results/style/train/preflight.json", configfile=config)
    report = json.loads((work / "results/style/train/preflight.json").read_text())
    assert report["llamafactory_version"] == "0.9.5"
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "llamafactory-cli": True,
        "GPU": True,
        "disk": True,
    }
    assert not list((work / "pod").iterdir()), "preflight launches nothing"

    snakemake(work, "lora_adapters/style_peft", configfile=config)
    launch = json.loads((work / "results/style/train/launch.json").read_text())
    assert launch["executor"] == "local" and launch["action"] == "launched"
    run_dir = work / "pod" / launch["run_id"]
    assert (run_dir / "exit_code").read_text().strip() == "0"
    summary = json.loads((work / "lora_adapters/style_peft/training_summary.json").read_text())
    assert summary["total_steps"] == 10 and summary["best_step"] in (5, 10)
    assert summary["selected_by"] == "min_eval_loss"
    assert (work / "lora_adapters/style_peft/adapter_model.safetensors").read_bytes() == (
        run_dir / f"output/checkpoint-{summary['best_step']}/adapter_model.safetensors"
    ).read_bytes()


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
    proc = snakemake(work, "lora_adapters/style_peft", configfile=config)
    summary = json.loads((work / "lora_adapters/style_peft/training_summary.json").read_text())
    assert summary["cut_by_budget"] is True and summary["best_step"] % 10 == 0
    assert 20 <= summary["gpu_time"]["wall_seconds"] < 60
    assert summary["gpu_time"]["usd"] >= 0.2
    assert "stopped by its budget" in proc.stderr
    (run_dir,) = (work / "pod").glob("style-*")
    assert "budget of 20s reached" in (work / "pod" / "guard.log").read_text()
    assert (run_dir / "budget_cut").exists()
