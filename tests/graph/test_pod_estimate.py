"""What a run needs (lora_style/training/estimate.py): memory against the guide's figures, steps, disk."""

from __future__ import annotations

import json

import pytest
import yaml

from lora_style.training import estimate

from helpers.workflow import REPO

PROFILES = REPO / "config" / "hparams"


def test_memory_estimate_reproduces_the_guides_32b_figures():
    args = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    args["model_name_or_path"] = "Qwen/Qwen2.5-32B"
    memory = estimate.estimate_memory(estimate.model_arch(args["model_name_or_path"]), args)
    # The guide's "Memory Requirements" section, part for part.
    assert 16 <= memory.weights <= 18
    assert 2 <= memory.lora <= 3
    assert 6 <= memory.optimizer <= 8
    assert 40 <= memory.activations <= 50
    assert 70 <= memory.total <= 80


def test_memory_estimate_follows_the_guides_advice_for_smaller_gpus():
    big = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    small = yaml.safe_load((PROFILES / "qwen25_14b.yaml").read_text())
    m32 = estimate.estimate_memory(estimate.QWEN25["32"], big)
    m14 = estimate.estimate_memory(estimate.QWEN25["14"], small)
    assert m14.total < 48 < m32.total  # 14B at rank 32 fits a 48 GB card, 32B does not
    half = estimate.estimate_memory(estimate.QWEN25["32"], {**big, "lora_rank": 32})
    assert half.lora == pytest.approx(m32.lora / 2)
    short = estimate.estimate_memory(estimate.QWEN25["32"], {**big, "cutoff_len": 1024})
    assert short.activations == pytest.approx(m32.activations / 2)
    assert estimate.estimate_memory(estimate.QWEN25["32"], {**big, "quantization_bit": None}).weights > 60


def test_arch_of_a_local_model_comes_from_its_config(tiny_model):
    arch = estimate.model_arch(str(tiny_model))
    config = json.loads((tiny_model / "config.json").read_text())
    assert (arch.hidden, arch.layers) == (config["hidden_size"], config["num_hidden_layers"])
    assert estimate.model_arch("someone/unknown-model") is None


def test_needs_cuda_names_the_keys():
    assert estimate.needs_cuda({"quantization_bit": 4, "bf16": True}) == ["quantization_bit: 4", "bf16: True"]
    assert estimate.needs_cuda(yaml.safe_load((PROFILES / "tiny_cpu.yaml").read_text())) == []


def test_planned_steps():
    assert estimate.planned_steps({"max_steps": 600}, 8840) == 600
    args = {
        "num_train_epochs": 2.0,
        "val_size": 0.1,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
    }
    assert estimate.planned_steps(args, 100) == 2 * 23  # 90 train examples, 4 per step


def test_disk_estimate_takes_a_fractional_save_steps_as_a_share_of_the_run():
    arch = estimate.QWEN25["32"]
    every_tenth = estimate.estimate_disk(arch, {"save_steps": 0.1}, 600)  # every 60 steps
    assert every_tenth == pytest.approx(estimate.estimate_disk(arch, {"save_steps": 60}, 600))
    assert estimate.save_interval({"save_steps": 0.1}, 600) == 60
    assert estimate.save_interval({"save_steps": 0.3}, 10) == 3  # rounded up, as transformers does
    assert estimate.save_interval({"save_steps": 0.01}, 5) == 1  # never 0
    assert estimate.save_interval({}, 600) == 500
