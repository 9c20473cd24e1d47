"""The report's pages (lora_style/report/pages.py) render their warnings from hand-made records: no
run, no Snakemake. The report built from a real trained run is tests/pod/test_report.py.
"""

from __future__ import annotations

import html
import re

from lora_style.report import pages as report_pages


def text_of(page: str) -> str:
    """A page's text without its tags, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_validation_page_warns_about_duplicates_and_examples_over_cutoff_len():
    page = text_of(
        report_pages.validation_page(
            "r",
            {
                "examples": 3,
                "duplicates": 1,
                "duplicate_lines": [{"line": 3, "same_as_line": 1}],
                "chars": {},
                "tokens": {"min": 10, "median": 600, "mean": 400, "max": 900},
                "cutoff_len": 512,
                "over_cutoff_len": 2,
                "over_cutoff_len_lines": [2, 3],
                "source": "a key of a later version",
            },
        )
    )
    assert "1 duplicate example(s): line 3 = line 1" in page
    assert "2 of 3 examples are longer than cutoff_len 512 tokens (lines 2, 3)" in page
    assert "source a key of a later version" in page  # a key it has no row for
    offline = text_of(
        report_pages.validation_page(
            "r",
            {
                "examples": 3,
                "chars": {},
                "cutoff_len": 2048,
                "tokens": {"counted": False, "why": "the hub did not answer (offline)"},
            },
        )
    )
    assert "No token counts (the hub did not answer (offline))" in offline
    assert "examples over it not counted" in offline
    counted = text_of(
        report_pages.validation_page(
            "r",
            {
                "examples": 3,
                "chars": {},
                "cutoff_len": 2048,
                "over_cutoff_len": 0,
                "tokens": {
                    "counted": True,
                    "tokenizer": "Qwen/Qwen2.5-32B",
                    "template": "qwen",
                    "min": 10,
                    "median": 20,
                    "mean": 20.0,
                    "max": 30,
                },
            },
        )
    )
    assert "All 3 examples fit in cutoff_len 2048 tokens" in counted
    assert "whole example (tokens, in the run's template) 10 20 20 30" in counted
    assert "Tokens counted with the tokenizer of Qwen/Qwen2.5-32B" in counted


def test_preflight_page_names_the_failed_checks():
    launch = {
        "pod": "a100",
        "where": "root@pod:22",
        "attempt": {
            "preflight": {
                "checks": [
                    {"name": "disk", "ok": False, "detail": "2 GB free, checkpoints need ~40 GB"},
                    {"name": "GPU", "ok": True, "detail": "1 x A100"},
                ]
            }
        },
    }
    page = text_of(report_pages.preflight_page("r", launch))
    assert "1 check(s) failed: disk" in page and "disk failed 2 GB free" in page
    attached = text_of(report_pages.preflight_page("r", {"action": "attached", "attempt": None}))
    assert "holds no preflight" in attached


def test_training_page_says_a_budget_cut_and_the_cost_against_the_plan():
    summary = {
        "best_step": 300,
        "best_eval_loss": 0.41,
        "selected_by": "min_eval_loss",
        "total_steps": 350,
        "wall_time_s": 7300,
        "cut_by_budget": True,
        "gpu_time": {
            "attempts": 2,
            "wall_seconds": 7300,
            "gpus": 2,
            "gpu_hours": 4.0556,
            "usd_per_hour": 3.78,
            "usd": 7.67,
        },
        "estimate": {
            "run": "r",
            "steps": 600,
            "rate": 200.0,
            "gpus": 2,
            "gpu_type": "NVIDIA A100-SXM4-80GB",
            "gpu_hourly_usd": 1.89,
            "where": "pod 'a100'",
            "gpu_hours": 6.0,
            "usd": 11.34,
        },
    }
    finished = {
        "attempts": [
            {"start": 0, "from_step": 0, "end": 3600, "rc": 137},
            {"start": 4000, "from_step": 200, "end": 7700, "rc": 0},
        ]
    }
    page = text_of(report_pages.training_page("r", summary, finished, {}))
    assert "stopped by its budget" in page
    assert "training wall time (all attempts) 2 h 01 min" in page
    assert "GPU time 4.056 GPU-hours (2 GPUs)" in page and "cost $7.67 at $3.78/h" in page
    assert (
        "the plan said r: 600 steps, ~6.0 GPU-hours (3.0 h on 2 x A100-SXM4-80GB) at $1.89 "
        "per GPU-hour = ~$11.34"
    ) in page
    assert "Attempts (2)" in page and "2 1970-01-01 01:06:40 UTC" in page and "200 0 1 h 01 min" in page


def test_training_page_has_the_guides_results_table_with_overfitting_at_the_reports_share():
    """The guide's run: best at 600, rising 32 % by 1500; the overfitting note follows the share."""
    from lora_style.training import results

    evals = [0.40, 0.358, 0.37, 0.40, 0.4726]
    history = [
        entry
        for i, loss in enumerate(evals, 1)
        for entry in (
            {"step": 300 * i, "loss": 0.5, "epoch": i},
            {"step": 300 * i, "eval_loss": loss, "epoch": i},
        )
    ]
    rows = results.results_table(history, {"gpu_hours": 1500 / 84, "gpus": 1, "usd_per_hour": 1.89}, 1500)
    summary = {
        "best_step": 600,
        "total_steps": 1500,
        "selected_by": "min_eval_loss",
        "results_table": rows,
        "advice": results.advice(rows, 1500, 1500),
    }
    page = text_of(report_pages.training_page("r", summary, {}, {}, 0.10))
    assert "step epoch train loss eval loss GPU-hours dollars note" in page
    assert "600 2.00 0.5000 0.3580 7.143 $13.50 best" in page
    assert "900 3.00 0.5000 0.3700 10.71 $20.25 first rise" in page
    assert "1500 5.00 0.5000 0.4726 17.86 $33.75 overfitting (+32 % over the minimum)" in page
    assert "Next run: the best was at step 600 (0.3580); `max_steps: 900`" in page
    lenient = text_of(report_pages.training_page("r", summary, {}, {}, 0.5))
    assert "overfitting (" not in lenient and "50 % or more above its minimum" in lenient
