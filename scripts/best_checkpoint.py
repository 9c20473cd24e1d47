"""Choose the checkpoint to keep, and draw the loss curves (the guide's "Training Results").

The guide found step 600 of 1500 best: validation loss bottoms out there and climbs 32 % by the
end. The pipeline finds that step from ``trainer_state.json`` (``log_history``: ``eval_loss`` per
evaluation) instead of assuming it: the saved checkpoint with the lowest ``eval_loss``, or the last
checkpoint when the run had no evaluation.

    python scripts/best_checkpoint.py output/trainer_state.json --checkpoints 100 200 300 \
        --plot loss.svg

The loss plot is a small SVG written here (no plotting library on the local side): train and eval
loss against step, the chosen step marked. It is text, diffs well and opens in any browser.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from fileio import write_atomic

# The chosen checkpoint's files that make the adapter; never optimizer.pt, scheduler.pt, rng_state.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json")


@dataclass
class Selection:
    step: int
    eval_loss: float | None
    selected_by: str  # "min_eval_loss" | "last_checkpoint"
    note: str = ""


def eval_losses(log_history: list[dict]) -> dict[int, float]:
    """Step -> eval_loss of every evaluation (a later entry for the same step wins)."""
    return {int(e["step"]): float(e["eval_loss"]) for e in log_history
            if "eval_loss" in e and "step" in e and e["eval_loss"] is not None}


def select_checkpoint(log_history: list[dict], checkpoint_steps: list[int]) -> Selection:
    """The saved checkpoint with the lowest eval_loss (earliest on a tie), else the last one."""
    if not checkpoint_steps:
        raise ValueError("no checkpoint to choose from")
    evals = eval_losses(log_history)
    candidates = [step for step in checkpoint_steps if step in evals]
    if candidates:
        best = min(candidates, key=lambda step: (evals[step], step))
        return Selection(best, evals[best], "min_eval_loss")
    last = max(checkpoint_steps)
    note = ("no evaluation in log_history" if not evals else
            f"evaluations at steps {sorted(evals)[:5]}... never fall on a saved checkpoint; make "
            "save_steps a multiple of eval_steps to choose by eval_loss")
    return Selection(last, None, "last_checkpoint", note)


# ---------------------------------------------------------------------------------- loss plot

def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def loss_svg(log_history: list[dict], best: Selection | None = None, title: str = "") -> str:
    """Train loss (line) and eval loss (line with dots) against step; the chosen step marked."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history
             if e.get("loss") is not None and "step" in e]
    evals = sorted(eval_losses(log_history).items())
    points = train + evals
    width, height, left, right, top, bottom = 720, 400, 64, 24, 44, 52
    if not points:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="80">'
                f'<text x="10" y="40" font-family="sans-serif">{escape(title)}: no loss logged</text></svg>\n')
    x_max = max(max(s for s, _ in points), 1)
    y_lo, y_hi = min(v for _, v in points), max(v for _, v in points)
    pad = (y_hi - y_lo) * 0.08 or 0.1
    y_lo, y_hi = max(0.0, y_lo - pad), y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(step: float) -> float:
        return left + plot_w * step / x_max

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - y_lo) / (y_hi - y_lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="24" font-size="15">{escape(title)}</text>']
    for tick in _ticks(0, x_max):
        if tick <= x_max:
            out.append(f'<line x1="{x(tick):.1f}" y1="{top}" x2="{x(tick):.1f}" y2="{top + plot_h}" stroke="#eee"/>'
                       f'<text x="{x(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(y_lo, y_hi):
        if y_lo <= tick <= y_hi:
            out.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" stroke="#eee"/>'
                       f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">step</text>')
    out.append(f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + plot_h / 2})">loss</text>')
    if best is not None:
        label = f"chosen: step {best.step}"
        if best.eval_loss is not None:
            label += f", eval_loss {best.eval_loss:.4g}"
        anchor = "end" if x(best.step) > left + plot_w * 0.7 else "start"
        shift = -4 if anchor == "end" else 4
        out.append(f'<line x1="{x(best.step):.1f}" y1="{top}" x2="{x(best.step):.1f}" y2="{top + plot_h}" '
                   'stroke="#2a9d3a" stroke-dasharray="5,4" stroke-width="1.5"/>'
                   f'<text x="{x(best.step) + shift:.1f}" y="{top + 14}" text-anchor="{anchor}" '
                   f'fill="#2a9d3a">{escape(label)}</text>')
    if train:
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in train)
        out.append(f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    if evals:
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in evals)
        out.append(f'<polyline points="{pts}" fill="none" stroke="#e8710a" stroke-width="1.5"/>')
        out.extend(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="#e8710a"/>' for s, v in evals)
    legend_x = left + plot_w - 120
    out.append(f'<line x1="{legend_x}" y1="{top + 30}" x2="{legend_x + 20}" y2="{top + 30}" stroke="#1f77b4" stroke-width="2"/>'
               f'<text x="{legend_x + 26}" y="{top + 34}">train loss</text>'
               f'<line x1="{legend_x}" y1="{top + 48}" x2="{legend_x + 20}" y2="{top + 48}" stroke="#e8710a" stroke-width="2"/>'
               f'<text x="{legend_x + 26}" y="{top + 52}">eval loss</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainer_state", help="trainer_state.json (its log_history)")
    parser.add_argument("--checkpoints", type=int, nargs="+", required=True,
                        help="steps that have a saved checkpoint-N")
    parser.add_argument("--plot", help="write the loss plot (SVG) here")
    args = parser.parse_args(argv)
    history = json.loads(Path(args.trainer_state).read_text(encoding="utf-8")).get("log_history", [])
    choice = select_checkpoint(history, args.checkpoints)
    print(json.dumps({"best_step": choice.step, "best_eval_loss": choice.eval_loss,
                      "selected_by": choice.selected_by}))
    if args.plot:
        write_atomic(args.plot, loss_svg(history, choice, Path(args.trainer_state).name).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
