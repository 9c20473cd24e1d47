"""The guide's results table and its advice (lora_style/training/results.py), on the guide's numbers:
eval loss bottoms out at step 600 (0.358) and climbs 32 % by step 1500."""

from __future__ import annotations

import pytest

from lora_style.training import results

# The guide's run: 1500 steps, an evaluation every 100, ~18 GPU-hours at $1.89/h.
EVAL = [0.52, 0.44, 0.40, 0.38, 0.365, 0.358, 0.362, 0.37, 0.38, 0.39, 0.40, 0.42, 0.44, 0.46, 0.4726]
HISTORY = [
    entry
    for i, eval_loss in enumerate(EVAL, 1)
    for entry in (
        {"step": 100 * i, "epoch": i / 5, "loss": 0.6 - 0.02 * i},
        {"step": 100 * i, "epoch": i / 5, "eval_loss": eval_loss},
    )
]
PAID = {"gpu_hours": 1500 / 84, "gpus": 1, "usd_per_hour": 1.89}


def test_one_row_per_evaluation_with_the_time_and_dollars_spent_up_to_it():
    rows = results.results_table(HISTORY, PAID, 1500)
    assert [r["step"] for r in rows] == list(range(100, 1600, 100))
    assert [r["eval_loss"] for r in rows] == EVAL
    assert rows[5]["train_loss"] == pytest.approx(0.48) and rows[5]["epoch"] == pytest.approx(1.2)
    assert rows[5]["gpu_hours"] == pytest.approx(600 / 84, abs=1e-5)
    assert rows[5]["usd"] == pytest.approx(600 / 84 * 1.89, abs=1e-3)  # ~$13.50, the guide's
    assert rows[-1]["usd"] == pytest.approx(1500 / 84 * 1.89, abs=1e-3)  # ~$34
    assert rows[5]["notes"] == ["best"] and rows[6]["notes"] == ["first rise"]
    assert rows[-1]["over_min"] == pytest.approx(0.32, abs=1e-3)


def test_overfitting_is_noted_above_the_reports_share_of_the_minimum():
    rows = results.results_table(HISTORY, PAID, 1500)
    notes = results.overfitting_notes(rows, 0.10)
    assert [i for i, n in enumerate(notes) if any(x.startswith("overfitting") for x in n)] == list(
        range(10, 15)  # step 1100 on: 0.40 is 11.7 % above 0.358
    )
    assert notes[-1][-1] == "overfitting (+32 % over the minimum)"
    assert not any("overfitting" in x for n in results.overfitting_notes(rows, 0.5) for x in n)


def test_the_advice_says_what_stopping_at_the_best_would_have_saved():
    rows = results.results_table(HISTORY, PAID, 1500)
    saved = (1500 - 700) / 84 * 1.89
    assert results.advice(rows, 1500, 1500) == (
        f"the best was at step 600 (0.3580); `max_steps: 700` (or early_stopping) would have saved "
        f"~${saved:.2f} of the ${1500 / 84 * 1.89:.2f} spent"
    )


def test_the_advice_when_eval_loss_still_falls_or_the_run_stopped_early():
    falling = results.results_table(HISTORY[:8], PAID, 400)
    assert results.advice(falling, 400, 1500).startswith(
        "eval loss was still falling at the last evaluation (step 400, 0.3800): more steps"
    )
    early = results.results_table(HISTORY[:16], {**PAID, "gpu_hours": 800 / 84}, 800)
    said = results.advice(early, 800, 1500, patience=2)
    assert said.startswith("stopped early at step 800 of 1500: eval loss had not improved for 2")
    assert f"saved ~${700 / 84 * 1.89:.2f} of the 700 steps left" in said
    assert results.advice([], 10).startswith("no evaluation in this run")
