"""The config's cross-checks and the plan's lines, in-process (no Snakemake started): what
rules/common.smk calls (lora_style/config/checks.py, lora_style/plan.py)."""

from __future__ import annotations

import pytest
import yaml

from lora_style import plan
from lora_style.config import checks
from lora_style.config.train_yaml import ConfigError
from lora_style.training import cost
from lora_style.training.settings import PodSettings

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
    "changes,says",
    [
        (
            {"early_stopping": {"patience": 0}},
            "config: runs.a: early_stopping.patience: 0 is not a whole number of evaluations",
        ),
        (
            {"early_stopping": {"patience": 2, "min_delta": 0.01}},
            "config: runs.a: early_stopping.min_delta: 0.01: LLaMA-Factory 0.9.5 passes no threshold",
        ),
        (
            {"early_stopping": {"patience": 2}, "overrides": {"save_steps": 150}},
            "config: runs.a: early_stopping needs save_steps a multiple of eval_steps",
        ),
        (
            {"early_stopping": {"patience": 2}, "overrides": {"eval_strategy": "no"}},
            "config: runs.a: early_stopping needs evaluations, but eval_strategy is 'no'",
        ),
        (
            {"early_stopping": False, "overrides": {"early_stopping_steps": 3}},
            "config: runs.a: early_stopping_steps is set; write early_stopping: {patience: 3}",
        ),
        (
            {"overrides": {"save_steps": 150}},
            "config: runs.a (profile ",  # the profile's own early_stopping, named with its file
        ),
    ],
)
def test_early_stopping_mistakes_name_the_key_and_the_fix(changes, says):
    with pytest.raises(ConfigError) as caught:
        checks.check_config({"a": run_cfg(**changes)}, {"gpu": POD})
    assert str(caught.value).startswith(says), str(caught.value)


def test_early_stopping_becomes_llamafactorys_own_keys():
    """patience -> early_stopping_steps, with what transformers' callback needs, and the count
    restored on a resume (transformers' default would start it again at 0)."""
    args, _ = checks.check_config({"a": run_cfg(early_stopping={"patience": 3})}, {"gpu": POD})
    plain, _ = checks.check_config({"a": run_cfg(early_stopping=False)}, {"gpu": POD})
    assert {k: v for k, v in args["a"].items() if k not in plain["a"]} == {
        "early_stopping_steps": 3,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "save_strategy": "steps",
        "restore_callback_states_from_checkpoint": True,
    }
    assert {k: v for k, v in args["a"].items() if k in plain["a"]} == plain["a"]  # nothing else changes
    tiny, _ = checks.check_config({"a": run_cfg(profile="tiny_cpu")}, {"gpu": POD})
    assert "early_stopping_steps" not in tiny["a"]  # the demo's profile does not stop early


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
    line = (
        "lovecraft: up to 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h = ~$13.50 at most "
        "(stops early when eval_loss has not improved for 2 evaluations; 84 steps/h from config/rates.yaml)"
    )
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


def test_the_schema_names_a_mistake_inside_early_stopping():
    import yaml

    from lora_style.config import errors
    from lora_style.paths import CONFIG

    schema = yaml.safe_load((CONFIG / "schema" / "config.schema.yaml").read_text())

    def explain(early_stopping) -> list[str]:
        return errors.explain(
            {"runs": {"a": run_cfg(early_stopping=early_stopping)}, "pods": {"gpu": POD}}, schema
        )

    assert explain({"patience": 0}) == [
        "config: runs.a.early_stopping.patience: 0 is less than the minimum of 1"
    ]
    assert explain({"patiense": 2}) == [
        "config: runs.a.early_stopping: unknown key 'patiense' (allowed: min_delta, patience)",
        "config: runs.a.early_stopping: 'patience' is missing",
    ]
    assert explain({"patience": 2}) == explain(False) == []


def test_the_plan_line_names_the_reference_evaluation_and_its_small_cost():
    """The guide's run: 84 steps/h of 16 examples at $1.89/h; 64 examples forward only, plus
    loading the model: a few minutes, cents."""
    args = yaml.safe_load((REPO / "config/hparams/qwen25_32b_a100.yaml").read_text())
    pod = PodSettings(name="runpod", executor="ssh", gpu_type="NVIDIA A100-SXM4-80GB", gpu_hourly_usd=1.89)
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
