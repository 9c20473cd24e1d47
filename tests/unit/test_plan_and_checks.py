"""The config's cross-checks and the plan's lines, in-process (no Snakemake started): what
rules/common.smk calls (lora_style/config/checks.py, lora_style/plan.py)."""

from __future__ import annotations

import pytest
import yaml

from lora_style import plan
from lora_style.config import checks
from lora_style.config.train_yaml import ConfigError
from lora_style.training import cost

from helpers.workflow import REPO, SAMPLE_DATA

POD = {"executor": "ssh", "host": "203.0.113.7", "gpu_type": "NVIDIA A100-SXM4-80GB", "gpu_hourly_usd": 1.89}


def run_cfg(**changes) -> dict:
    return {
        "data": str(SAMPLE_DATA),
        "base_model": "Qwen/Qwen2.5-32B-Instruct",
        "profile": "qwen25_32b_a100",
        "pod": "gpu",
        **changes,
    }


def test_a_good_config_gives_each_runs_complete_arguments():
    args, bases = checks.check_config({"lovecraft": run_cfg()}, {"gpu": POD})
    assert args["lovecraft"]["lora_rank"] == 64 and args["lovecraft"]["template"] == "qwen"
    assert bases == {"Qwen2.5-32B-Instruct": "Qwen/Qwen2.5-32B-Instruct"}


@pytest.mark.parametrize(
    "runs,pods,says",
    [
        ({"a": run_cfg(pod="nowhere")}, {"gpu": POD}, "config: runs.a.pod: no pod 'nowhere' under pods:"),
        (
            {"a": run_cfg(overrides={"lora_rank": 8.5})},
            {"gpu": POD},
            "config: runs.a.overrides.lora_rank: 8.5 is not a whole number",
        ),
        (
            {"a": run_cfg(overrides={"template": None})},
            {"gpu": POD},
            "config: runs.a: the training arguments have no 'template'",
        ),
        (
            {"a": run_cfg(), "b": run_cfg(base_model="./elsewhere/Qwen2.5-32B-Instruct")},
            {"gpu": POD},
            "config: runs.b.base_model './elsewhere/Qwen2.5-32B-Instruct' and 'Qwen/Qwen2.5-32B-Instruct' would share",
        ),
        (
            {"a": run_cfg()},
            {"gpu": {**POD, "gpu_hourly_usd": None, "max_usd": 40}},
            "config: pods.gpu.max_usd needs pods.gpu.gpu_hourly_usd",
        ),
        (
            {"a": run_cfg()},
            {"gpu": {**POD, "provider": "runpod", "api_url": "https://rest.runpod.io/v1"}},
            "config: pods.gpu.api_url https://rest.runpod.io/v1 names RunPod's REST API v1",
        ),
    ],
)
def test_each_cross_check_names_the_key_to_change(runs, pods, says):
    with pytest.raises(ConfigError) as caught:
        checks.check_config(runs, pods)
    assert str(caught.value).startswith(says), str(caught.value)


def test_the_plan_line_says_what_the_plan_spends(tmp_path):
    cfg = run_cfg()
    args, _ = checks.check_config({"lovecraft": cfg}, {"gpu": POD})
    estimate = lambda: plan.training_estimate(
        "lovecraft",
        cfg,
        args["lovecraft"],  # noqa: E731
        {"name": "gpu", **POD},
        tmp_path,
    )
    line = "lovecraft: 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h = ~$13.50"
    assert plan.plan_line("lovecraft", {"submit_training", "validate_dataset"}, estimate) == (
        f"lovecraft_mlx: trains in this plan ({line})"
    )
    assert plan.plan_line("lovecraft", {"best_checkpoint"}, estimate).endswith(
        "only the download of a finished one"
    )
    assert plan.plan_line("lovecraft", {"metadata"}, lambda: 1 / 0).endswith("no GPU time")


def test_a_placeholder_pod_stops_only_a_run_that_would_contact_it():
    runs, pods = {"a": run_cfg()}, {"gpu": {**POD, "host": plan.POD_PLACEHOLDER}}
    assert plan.placeholder_pods(runs, pods) == ["gpu"]
    assert plan.refused_placeholder(runs, pods, [("validate_dataset", "a")]) is None
    error = plan.refused_placeholder(runs, pods, [("submit_training", "a")])
    assert error.startswith("config: pods.gpu.host is the placeholder POD_IP") and "Nothing was run" in error


def test_the_plan_line_names_the_reference_evaluation_and_its_small_cost():
    """The guide's run: 84 steps/h of 16 examples at $1.89/h; 64 examples forward only, plus
    loading the model: a few minutes, cents."""
    args = yaml.safe_load((REPO / "config/hparams/qwen25_32b_a100.yaml").read_text())
    pod = {"name": "runpod", "executor": "ssh", "gpu_type": "NVIDIA A100-SXM4-80GB", "gpu_hourly_usd": 1.89}
    estimate = cost.estimate("lovecraft", args, "qwen25_32b_a100", pod, None)
    minutes = plan.reference_eval_minutes(estimate, args, 64)
    assert minutes == pytest.approx(3 + 64 * (3600 / 84 / 16) / 3 / 60)
    line = plan.plan_line(
        "lovecraft",
        {"submit_training"},
        lambda: estimate,
        lambda found: plan.reference_eval_note(found, args, 64),
    )
    assert line.endswith(
        f"; then up to 64 held-out examples evaluated on the pod, ~{minutes:.0f} min "
        f"(~${minutes / 60 * 1.89:.2f}))"
    )
