"""A run's measured outcome on its report pages: the guide's results table with its advice (the
training page) and what the Mac bundle keeps (the MLX bundle page)."""

from __future__ import annotations

from html import escape

from lora_style.report.html_parts import duration, facts_table, fmt, grid, note
from lora_style.training import results


def _num(value, digits: str) -> str:
    return "" if value is None else format(value, digits)


def results_section(summary: dict, overfitting_share: float) -> list[str]:
    """The guide's results table (training_summary.json's results_table) and its advice; the
    overfitting note at this report's share (results_table.overfitting_share)."""
    rows = summary.get("results_table")
    if rows is None:
        return [note("info", "This training summary holds no results table (fetched by an older version).")]
    out = ["<h2>Results, per evaluation</h2>"]
    if summary.get("stopped_early"):
        out.append(
            note(
                "ok",
                escape(
                    f"Stopped early at step {summary.get('total_steps')} of {summary.get('max_steps')}: "
                    f"eval_loss had not improved for {summary.get('early_stopping_patience')} evaluations."
                ),
            )
        )
    notes = results.overfitting_notes(rows, overfitting_share)
    out.append(
        grid(
            ["step", "epoch", "train loss", "eval loss", "GPU-hours", "dollars", "note"],
            [
                [
                    str(r["step"]),
                    _num(r.get("epoch"), ".2f"),
                    _num(r.get("train_loss"), ".4f"),
                    _num(r.get("eval_loss"), ".4f"),
                    _num(r.get("gpu_hours"), ".4g"),
                    "" if r.get("usd") is None else f"${r['usd']:.2f}",
                    escape(", ".join(n)),
                ]
                for r, n in zip(rows, notes, strict=True)
            ],
            numeric={0, 1, 2, 3, 4, 5},
        )
    )
    out.append(
        f"<p>GPU-hours and dollars are spent up to that step (the run's paid time spread over its "
        f"steps); overfitting: eval loss {overfitting_share * 100:.0f} % or more above its minimum.</p>"
    )
    if summary.get("advice"):
        out.append(note("info", "Next run: " + escape(summary["advice"])))
    return out


def fidelity_part(fidelity: dict | None) -> list[str]:
    """The verdict of mlx/fidelity.py: how much of what the adapter learnt the bundle keeps."""
    if not fidelity:
        return []
    body = ["<h2>What the Mac bundle keeps</h2>"]
    if "skipped" in fidelity:
        return [*body, note("warn", escape(f"Not measured: {fidelity['skipped']}."))]
    kind = {True: "ok", False: "bad", None: "warn"}[fidelity.get("ok")]
    body.append(note(kind, escape(fidelity["sentence"])))
    rows = [
        ["the pod: LLaMA-Factory's evaluation of the chosen checkpoint", fmt(fidelity.get("pod_loss"))],
        ["here: the unquantised base + adapter (mlx-lm)", fmt(fidelity.get("unquantised_adapter_loss"))],
        ["here: the bundle, 4-bit base + adapter (mlx-lm)", fmt(fidelity.get("bundle_loss"))],
        ["here: the 4-bit base alone (mlx-lm)", fmt(fidelity.get("base_4bit_loss"))],
    ]
    body.append(grid(["held-out loss (mean over response tokens)", "loss"], rows, {1}))
    body.append(
        facts_table(
            {
                "examples": fidelity.get("examples"),
                "kept (per cent of what the adapter learnt)": fidelity.get("kept_percent"),
                "gap (per cent)": fidelity.get("gap_percent"),
                "threshold (per cent, fidelity.threshold_percent)": fidelity.get("threshold_percent"),
                "pod time of its evaluation": duration(fidelity.get("pod_eval_seconds")),
                "time here of the mlx-lm measurement": duration(fidelity.get("mac_eval_seconds")),
            }
        )
    )
    return body
