"""The verdict of mlx/fidelity.py: what metadata.json and the report say of the measured losses."""

from __future__ import annotations

import pytest

from lora_style.mlx import fidelity

LOSSES = {"base_4bit_loss": 2.0, "bundle_loss": 1.03, "unquantised_adapter_loss": 0.99, "examples": 64}


def test_the_share_kept_is_measured_against_the_pods_loss():
    verdict = fidelity.verdict(LOSSES, {"eval_loss": 1.0}, 10.0, "lovecraft")
    assert (verdict["kept_percent"], verdict["gap_percent"], verdict["ok"]) == (97.0, 3.0, True)
    assert verdict["sentence"].startswith("The Mac bundle keeps 97% of what the adapter learnt")
    assert "quant_table" not in verdict["sentence"]


def test_above_the_threshold_the_sentence_names_the_fixes():
    verdict = fidelity.verdict({**LOSSES, "bundle_loss": 1.5}, {"eval_loss": 1.0}, 10.0, "lovecraft")
    assert verdict["ok"] is False and verdict["gap_percent"] == 50.0
    assert (
        "snakemake lovecraft_quant_table" in verdict["sentence"]
        and "--q-group-size 32" in verdict["sentence"]
    )


def test_without_the_pods_loss_the_unquantised_adapter_is_the_reference():
    verdict = fidelity.verdict(LOSSES, {"skipped": "turned off"}, 10.0)
    assert verdict["pod_loss"] is None and verdict["reference"] == "the unquantised base + adapter here"
    assert verdict["kept_percent"] == pytest.approx(100 * 0.97 / 1.01, abs=0.1)
    nothing = fidelity.verdict(
        {k: v for k, v in LOSSES.items() if k != "unquantised_adapter_loss"}, None, 10.0
    )
    assert (
        nothing["ok"] is None
        and nothing["kept_percent"] is None
        and "No reference loss" in nothing["sentence"]
    )


def test_an_adapter_that_learnt_nothing_is_said_so():
    verdict = fidelity.verdict(LOSSES, {"eval_loss": 2.5}, 10.0)
    assert verdict["ok"] is False and "learnt nothing measurable" in verdict["sentence"]


def test_llamafactorys_truncation_keeps_the_response_first():
    assert fidelity.infer_seqlen(10, 20, 100) == (10, 20)
    assert fidelity.infer_seqlen(10, 200, 100) == (10, 90)  # the prompt is short: the response is cut
    assert fidelity.infer_seqlen(300, 20, 100) == (80, 20)  # the response is short: the prompt is cut
    assert fidelity.infer_seqlen(300, 100, 100) == (75, 25)  # both: in proportion to their lengths
