"""What the Mac bundle keeps, measured on `make demo`'s real run (the `demo` fixture, shared with
test_demo_samples.py): the pod's own evaluation of the chosen checkpoint (LLaMA-Factory, here on
the CPU through the local executor) against mlx-lm's loss on the same held-out examples."""

from __future__ import annotations

import json
import shutil

import pytest

from lora_style.mlx import fidelity
from lora_style.prompt_format import load_template

from helpers.workflow import snakemake

pytestmark = [pytest.mark.slow, pytest.mark.pod]


def records(work):
    losses = json.loads((work / "results/lovecraft/fidelity/losses.json").read_text())
    reference = json.loads((work / "results/lovecraft/train/reference_eval.json").read_text())
    return losses, reference


def test_the_pod_and_mlx_measure_the_same_loss_on_the_unquantised_adapter(demo):
    """The tiny profile trains unquantised, so LLaMA-Factory's eval_loss of the chosen checkpoint
    and mlx-lm's loss of the unquantised base + the converted adapter are the same quantity."""
    work, _ = demo
    losses, reference = records(work)
    held_out = (work / "results/lovecraft/data/eval.jsonl").read_text().splitlines()
    assert reference["examples"] == losses["examples"] == len(held_out) > 0
    assert reference["eval_loss"] > 0.3, "a loss this small would prove little"
    assert losses["unquantised_adapter_loss"] == pytest.approx(reference["eval_loss"], rel=0.01)
    assert losses["base_4bit_loss"] > losses["unquantised_adapter_loss"], "the adapter learnt something"


def test_the_4bit_bundles_gap_is_measured_and_reported(demo):
    work, _ = demo
    losses, reference = records(work)
    meta = json.loads((work / "lora_adapters/lovecraft_mlx/metadata.json").read_text())
    verdict = meta["fidelity"]
    assert verdict["pod_loss"] == reference["eval_loss"]
    assert verdict["bundle_loss"] == pytest.approx(losses["bundle_loss"], abs=1e-6)
    learnt = losses["base_4bit_loss"] - reference["eval_loss"]
    kept = 100 * (losses["base_4bit_loss"] - losses["bundle_loss"]) / learnt
    assert verdict["kept_percent"] == pytest.approx(kept, abs=0.1)
    assert verdict["gap_percent"] == pytest.approx(100 - kept, abs=0.1)
    assert f"keeps {kept:.0f}% of what the adapter learnt" in verdict["sentence"]
    page = (work / "results/lovecraft/report/metadata.html").read_text()
    assert "What the Mac bundle keeps" in page and f"keeps {kept:.0f}%" in page
    if not verdict["ok"]:
        assert "lovecraft_quant_table" in verdict["sentence"]


def test_an_adapter_scaled_by_zero_is_caught_by_the_verdict(demo, tmp_path):
    import mlx.core as mx

    work, _ = demo
    losses, reference = records(work)
    broken = tmp_path / "broken"
    shutil.copytree(work / "lora_adapters/lovecraft_mlx", broken)
    weights = mx.load(str(broken / "adapters.safetensors"))
    mx.save_safetensors(
        str(broken / "adapters.safetensors"),
        {k: mx.zeros_like(v) if k.endswith("lora_b") else v for k, v in weights.items()},
    )
    examples = fidelity.read_examples(work / "results/lovecraft/data/eval.jsonl", 64)
    measured = fidelity.measure(
        examples, load_template("qwen"), 512, str(work / "models/tiny-qwen2-4bit-mlx"), str(broken), log=print
    )
    assert measured["bundle_loss"] == pytest.approx(measured["base_4bit_loss"], rel=1e-5)
    verdict = fidelity.verdict(measured, reference, 10.0, "lovecraft")
    assert verdict["ok"] is False and abs(verdict["kept_percent"]) < 1
    assert "keeps 0% of what the adapter learnt" in verdict["sentence"]


def test_the_quant_table_measures_each_candidate(demo):
    """`snakemake lovecraft_quant_table` on the demo: the 4-bit base and the four default
    candidates (group size 32, 6 and 8 bits, mixed_4_6), each with size, loss and speed."""
    work, config = demo
    snakemake(work, "lovecraft_quant_table", configfile=config, timeout=900)
    numbers = json.loads((work / "results/lovecraft/quant_table.json").read_text())
    rows = {row["name"]: row for row in numbers["rows"]}
    assert list(rows) == ["4bit", "g32", "6bit", "8bit", "mixed_4_6"]
    assert (rows["g32"]["bits"], rows["g32"]["group_size"]) == (4, 32)
    assert (rows["6bit"]["bits"], rows["8bit"]["bits"]) == (6, 8) and rows["mixed_4_6"]["mixed"]
    assert rows["4bit"]["bytes"] < rows["6bit"]["bytes"] < rows["8bit"]["bytes"]
    assert all(row["tokens_per_s"] > 0 for row in rows.values())
    _, reference = records(work)
    # 8 bits is close to the unquantised weights the pod evaluated; 4 bits is what the bundle has.
    assert rows["8bit"]["loss"] == pytest.approx(reference["eval_loss"], rel=0.02)
    assert rows["4bit"]["loss"] == pytest.approx(records(work)[0]["bundle_loss"], rel=1e-5)
    table = (work / "results/lovecraft/quant_table.md").read_text()
    assert table.count("\n| ") == 1 + 5 and "tokens/s" in table
