"""What a training costs (lora_style/training/cost.py): the plan's estimate, the GPU time used, budgets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

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
        == "r: 100 steps, ~0.0 hours on this machine; no price (set gpu_hourly_usd on the pod for a cost)"
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
