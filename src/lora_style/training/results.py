"""The guide's results table, for every run: one row per evaluation, and what it tells the next run.

The guide printed it by hand ("Training Results": step, train loss, eval loss, and a note at
step 600, the best, before eval loss climbed 32 % by step 1500). Here it is built from the run's
own trainer_state.json (``log_history``) and its paid time (finished.json's gpu_time), once, at the
fetch: each evaluation's step, epoch, train loss (the newest logged at or before that step), eval
loss, and the GPU-hours and dollars spent up to that step. The paid time is spread evenly over the
steps trained (``gpu_hours x step / last step``): start-up and evaluations are paid for at the
same rate as the steps around them, as the guide's own reckoning did.

Notes: ``best`` (the lowest eval loss, the checkpoint the fetch keeps), ``first rise`` (the first
evaluation whose eval loss is above the one before); ``over_min`` is the share above the minimum,
from which the report notes ``overfitting`` at its configurable share (overfitting_notes), so
editing that share reruns only the report pages. ``advice`` is one sentence for the next run.
"""

from __future__ import annotations


def _by_step(log_history: list[dict], key: str) -> dict[int, dict]:
    """Step -> the log entry holding `key` (a later entry for the same step wins: a resume redoes
    the steps after its checkpoint)."""
    return {
        int(e["step"]): e
        for e in log_history
        if isinstance(e, dict) and e.get(key) is not None and e.get("step") is not None
    }


def results_table(log_history: list[dict], gpu_time: dict | None, last_step: int | None) -> list[dict]:
    """One row per evaluation of `log_history`, in step order."""
    evals = _by_step(log_history, "eval_loss")
    losses = _by_step(log_history, "loss")
    gpu_time = gpu_time or {}
    total_hours, price, gpus = gpu_time.get("gpu_hours"), gpu_time.get("usd_per_hour"), gpu_time.get("gpus")
    last = last_step or max([*evals, *losses, 0])
    rows: list[dict] = []
    for step in sorted(evals):
        earlier = [s for s in losses if s <= step]
        hours = total_hours * step / last if total_hours is not None and last else None
        rows.append(
            {
                "step": step,
                "epoch": evals[step].get("epoch"),
                "train_loss": losses[max(earlier)]["loss"] if earlier else None,
                "eval_loss": float(evals[step]["eval_loss"]),
                "gpu_hours": round(hours, 6) if hours is not None else None,
                # The price is the pod's per hour (all its GPUs): GPU-hours / GPUs x price.
                "usd": round(hours / int(gpus or 1) * price, 4)
                if hours is not None and price is not None
                else None,
                "notes": [],
            }
        )
    if not rows:
        return rows
    best = min(rows, key=lambda r: (r["eval_loss"], r["step"]))
    low = best["eval_loss"]
    best["notes"].append("best")
    for before, row in zip(rows, rows[1:], strict=False):
        if row["eval_loss"] > before["eval_loss"]:
            row["notes"].append("first rise")
            break
    for row in rows:
        row["over_min"] = round((row["eval_loss"] - low) / low, 6) if low > 0 else 0.0
    return rows


def overfitting_notes(rows: list[dict], share: float) -> list[list[str]]:
    """Each row's notes with `overfitting (+N % over the minimum)` where eval loss is `share` or
    more above its minimum (after the best)."""
    best_step = next((r["step"] for r in rows if "best" in r.get("notes", [])), None)
    out = []
    for row in rows:
        notes = list(row.get("notes", []))
        over = row.get("over_min") or 0.0
        if best_step is not None and row["step"] > best_step and over >= share:
            notes.append(f"overfitting (+{over * 100:.0f} % over the minimum)")
        out.append(notes)
    return out


def _spent(amount_usd: float | None, gpu_hours: float | None) -> str:
    if amount_usd is not None:
        return f"${amount_usd:.2f}"
    return f"{gpu_hours:.2f} GPU-hours" if gpu_hours is not None else "(unknown)"


def advice(
    rows: list[dict],
    last_step: int,
    max_steps: int | None = None,
    patience: int | None = None,
    cut_by_budget: bool = False,
) -> str:
    """One sentence for the next run, from the numbers."""
    if not rows:
        return (
            "no evaluation in this run: set eval_strategy: steps and eval_steps (and an evaluation "
            "set) to see where eval loss bottoms out"
        )
    best = next(r for r in rows if "best" in r["notes"])
    last = rows[-1]
    cut = f"cut by its budget at step {last_step}: " if cut_by_budget else ""
    if best is last:
        if len(rows) == 1:
            return (
                f"{cut}only one evaluation (step {best['step']}): evaluate more often (eval_steps) "
                "to see whether eval loss still falls"
            )
        return (
            f"{cut}eval loss was still falling at the last evaluation (step {last['step']}, "
            f"{last['eval_loss']:.4f}): more steps would likely help"
        )
    total_usd, total_hours = last.get("usd"), last.get("gpu_hours")
    stopped_early = bool(patience and max_steps and last_step < max_steps and not cut_by_budget)
    if stopped_early:
        per_step_usd = total_usd / last_step if total_usd is not None and last_step else None
        per_step_h = total_hours / last_step if total_hours is not None and last_step else None
        left = max_steps - last_step
        saved = _spent(
            per_step_usd * left if per_step_usd is not None else None,
            per_step_h * left if per_step_h is not None else None,
        )
        return (
            f"stopped early at step {last_step} of {max_steps}: eval loss had not improved for "
            f"{patience} evaluation{'s' * (patience != 1)} after the best at step {best['step']} "
            f"({best['eval_loss']:.4f}); that saved ~{saved} of the {max_steps - last_step} steps "
            "left"
        )
    after = rows[rows.index(best) + 1]  # the evaluation that showed the best was the best
    saved_usd = total_usd - after["usd"] if total_usd is not None and after.get("usd") is not None else None
    saved_h = (
        total_hours - after["gpu_hours"]
        if total_hours is not None and after.get("gpu_hours") is not None
        else None
    )
    return (
        f"{cut}the best was at step {best['step']} ({best['eval_loss']:.4f}); `max_steps: "
        f"{after['step']}` (or early_stopping) would have saved ~{_spent(saved_usd, saved_h)} of "
        f"the {_spent(total_usd, total_hours)} spent"
    )
