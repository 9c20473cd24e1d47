"""What a training costs (lora_style/training/cost.py): the plan's estimate, the GPU time used, budgets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from lora_style.config.train_yaml import train_args
from lora_style.training import cost
from lora_style.training.settings import PodSettings

from helpers.workflow import REPO

PROFILES = REPO / "config" / "hparams"
A100 = PodSettings(name="runpod", executor="ssh", gpu_type="NVIDIA A100-SXM4-80GB", gpu_hourly_usd=1.89)


def test_the_guides_run_costs_what_the_guide_paid():
    """600 steps at the guide's 1.4 steps/min on an A100 SXM 80GB at $1.89/h."""
    args = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    estimate = cost.estimate("lovecraft", args, "qwen25_32b_a100", A100, None)
    assert (estimate.steps, estimate.rate) == (600, 84.0)
    assert estimate.gpu_hours == pytest.approx(600 / 84)
    assert estimate.usd == pytest.approx(600 / 84 * 1.89)
    assert estimate.line() == (
        "lovecraft: 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h = ~$13.50"
        " (84 steps/h from config/rates.yaml)"
    )


def test_with_early_stopping_the_plan_gives_the_most_it_can_cost(tmp_path):
    """The shipped 32B profile stops early (patience 2): the line is a maximum and says so."""
    args = train_args("lovecraft", {"profile": "qwen25_32b_a100", "base_model": "Qwen/Qwen2.5-32B"})
    estimate = cost.estimate("lovecraft", args, "qwen25_32b_a100", A100, None, workdir=tmp_path)
    assert estimate.line() == (
        "lovecraft: up to 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h = ~$13.50 at "
        "most (stops early when eval_loss has not improved for 2 evaluations; 84 steps/h from "
        "config/rates.yaml)"
    )


def test_a_finished_runs_measured_rate_wins_over_the_guides(tmp_path):
    """.state/rates.json, written after each fetch, feeds the next plan of the same kind."""
    args = train_args("lovecraft", {"profile": "qwen25_32b_a100", "base_model": "Qwen/Qwen2.5-32B"})
    key = cost.rate_key("qwen25_32b_a100", A100.gpu_type, 1, 2048, True)
    cost.record_rate(key, "lovecraft", "lovecraft-aaa", 300, 3 * 3600, None, tmp_path)
    cost.record_rate({**key, "cutoff_len": 1024}, "short", "short-bbb", 500, 3600, None, tmp_path)
    one = cost.estimate("lovecraft", args, "qwen25_32b_a100", A100, None, workdir=tmp_path)
    assert one.rate == 100 and one.rate_source.startswith("measured on your last 1 run (")
    cost.record_rate(key, "lovecraft", "lovecraft-ccc", 500, 5 * 3600 / 3, None, tmp_path)
    two = cost.estimate("lovecraft", args, "qwen25_32b_a100", A100, None, workdir=tmp_path)
    assert two.rate == pytest.approx(800 / (3 + 5 / 3))  # steps over hours, both runs
    assert "steps/h measured on your last 2 runs (.state/rates.json)" in two.line()
    assert not (REPO / "config" / "rates.json").exists()


def test_the_step_a_budget_ends_a_run_at():
    est = cost.estimate("r", {"max_steps": 600}, "qwen25_32b_a100", A100, None)
    assert est.step_within(3600 * 5) == 420  # 5 h at 84 steps/h
    assert est.step_within(3600 * 8) is None  # the run ends first
    cut = cost.estimate("r", {"max_steps": 600}, "qwen25_32b_a100", replace(A100, max_usd=1.89 * 5), None)
    assert cut.line().endswith(
        "(84 steps/h from config/rates.yaml; the budget (max_usd / max_hours) stops it at about step 420)"
    )


def test_epochs_count_the_examples_and_every_gpu_is_paid_for():
    args = {
        "num_train_epochs": 2.0,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "val_size": 0.0,
    }
    two = cost.estimate("r", args, "qwen25_32b_a100", replace(A100, gpu_count=2), 800)
    assert two.steps == 2 * 800 // (4 * 2)  # the effective batch spans the GPUs
    assert two.gpu_hours == pytest.approx(two.steps / 84 * 2)
    assert "on 2 x A100-SXM4-80GB" in two.line()


def test_what_the_line_says_without_a_rate_or_a_price():
    args = {"max_steps": 100}
    assert "no measured rate" in cost.estimate("r", args, "qwen25_14b", A100, None).line()
    local = cost.estimate("r", args, "tiny_cpu", PodSettings(name="here", executor="local"), None)
    assert (
        local.line()
        == "r: 100 steps, ~0.0 hours on this machine (4,000 steps/h from config/rates.yaml); no price (set "
        "gpu_hourly_usd on the pod for a cost)"
    )


def test_used_counts_every_attempt_and_prices_it():
    attempts = [
        {"start": 0, "from_step": 0, "end": 1800, "rc": 137},
        {"start": 2000, "from_step": 50, "end": 5600, "rc": 0},
    ]
    used = cost.used(attempts, replace(A100, gpu_count=2))
    assert used["wall_seconds"] == 5400 and used["gpu_hours"] == 3.0
    assert used["usd_per_hour"] == pytest.approx(3.78) and used["usd"] == pytest.approx(5.67)
    # A rented pod's own price wins over the configured one.
    assert cost.used(attempts, replace(A100, pod_usd_per_hour=2.5))["usd"] == pytest.approx(3.75)


def test_budgets_in_seconds_of_training():
    assert cost.budget_seconds(A100) is None
    assert cost.budget_seconds(replace(A100, max_hours=2)) == 7200
    assert cost.budget_seconds(replace(A100, max_usd=18.9)) == 36000  # 10 h at $1.89
    assert cost.budget_seconds(replace(A100, max_usd=18.9, max_hours=2)) == 7200
    assert cost.budget_seconds(PodSettings(max_usd=5)) is None  # no price: no dollars


def test_a_slurm_job_pays_for_its_gpus_on_every_node():
    from lora_style.training import cost

    pod = PodSettings(executor="slurm", gpus=4, nodes=2, gpu_hourly_usd=2.0)
    assert cost.gpus_paid(pod) == 8 and cost.usd_per_hour(pod) == 16.0
    assert cost.gpus_paid(PodSettings(executor="slurm", partition="cpu")) == 1  # a CPU job: one unit
    assert cost.gpus_paid(PodSettings(executor="ssh", gpu_count=2, gpus=7)) == 2
    used = cost.used([{"start": 0, "end": 1800}], pod)
    assert used["gpu_hours"] == 4.0 and used["usd"] == 8.0


def test_the_projection_while_training_prices_the_rest_and_names_the_budgets_step():
    """At step 100 of 600 after 1 h paid, 84 steps/h: 5.95 h to go, and max_usd $9.45 (5 h)
    ends it at step 100 + 4 h x 84 = 436."""
    pod = replace(A100, max_usd=1.89 * 5)
    projection = cost.project(100, 600, 84 / 3600, 3600.0, pod)
    assert projection["remaining_s"] == pytest.approx(500 / 84 * 3600)
    assert projection["usd"] == pytest.approx((1 + 500 / 84) * 1.89)
    assert projection["cut_step"] == 436
    assert cost.project(100, 600, 84 / 3600, 3600.0, A100)["cut_step"] is None  # no budget
    from lora_style.training import follow, messages

    assert follow.seconds({"elapsed_time": "1 day, 2:03:04"}) == 86400 + 2 * 3600 + 3 * 60 + 4
    assert follow.seconds({"elapsed_time": "0:00:07"}) == 7 and follow.seconds({}) is None
    line = messages.budget_cut_line(projection, 600, {"max_usd": pod.max_usd})
    assert line.startswith(
        "at this rate the budget (max_usd 9.45) stops the training at about step 436 of 600"
    )
    assert "~$" in messages.format_projection(projection, patience=2)
