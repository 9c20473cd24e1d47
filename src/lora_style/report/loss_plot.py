"""Draw a run's loss curves (the guide's "Training Results") with the chosen checkpoint marked.

    python scripts/loss_plot.py results/lovecraft/train/trainer_state.json \
        --summary results/lovecraft/train/training_summary.json --output results/lovecraft/train/loss.svg

Reads what the fetch left on this machine: the training's ``log_history`` (train loss per logging
step, eval loss per evaluation) and the checkpoint the fetch chose (``best_step``,
``best_eval_loss`` of training_summary.json). Restyling the plot reruns this alone, never the pod.
The SVG keeps its labels as text (searchable, and a test can read the chosen step).
"""

from __future__ import annotations

import argparse
import io
import sys

import matplotlib

from lora_style.fileio import UserError, read_json_object, write_atomic

matplotlib.use("Agg")  # files only: no display, on a Mac or in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

TRAIN_COLOUR, EVAL_COLOUR, CHOSEN_COLOUR = "#1f77b4", "#e8710a", "#2a9d3a"


def curves(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) points; a later eval of the same step wins."""
    train = [
        (int(e["step"]), float(e["loss"])) for e in log_history if e.get("loss") is not None and "step" in e
    ]
    evals = {
        int(e["step"]): float(e["eval_loss"])
        for e in log_history
        if e.get("eval_loss") is not None and "step" in e
    }
    return train, sorted(evals.items())


def chosen_label(summary: dict) -> str:
    label = f"chosen: step {summary['best_step']}"
    if summary.get("best_eval_loss") is not None:
        return f"{label}, eval_loss {summary['best_eval_loss']:.4g}"
    return f"{label} (the last checkpoint: no eval_loss on a saved step)"


def loss_svg(log_history: list[dict], summary: dict, title: str) -> str:
    """Train loss (line) and eval loss (line with dots) against step, the chosen step marked."""
    train, evals = curves(log_history)
    with plt.rc_context(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "loss",
            "font.size": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
        if train:
            ax.plot(*zip(*train), color=TRAIN_COLOUR, linewidth=1.5, label="train loss")
        if evals:
            ax.plot(
                *zip(*evals), color=EVAL_COLOUR, linewidth=1.5, marker="o", markersize=4, label="eval loss"
            )
        if not (train or evals):
            ax.text(0.5, 0.5, "no loss logged", transform=ax.transAxes, ha="center")
        step = summary.get("best_step")
        if step is not None:
            ax.axvline(step, color=CHOSEN_COLOUR, linestyle="--", linewidth=1.5, label=chosen_label(summary))
            if summary.get("best_eval_loss") is not None:
                ax.plot(
                    [step],
                    [summary["best_eval_loss"]],
                    marker="*",
                    markersize=14,
                    color=CHOSEN_COLOUR,
                    linestyle="none",
                )
        if summary.get("stopped_early") and summary.get("total_steps"):
            ax.axvline(
                summary["total_steps"],
                color="#777777",
                linestyle=":",
                linewidth=1.5,
                label=f"stopped early: step {summary['total_steps']} of {summary.get('max_steps')}",
            )
        ax.set(title=title, xlabel="step", ylabel="loss")
        ax.grid(True, color="#eeeeee")
        ax.set_xlim(left=0)
        if train or evals or step is not None:  # below the axes: it never hides a curve
            fig.legend(loc="outside lower center", ncols=3, frameon=False)
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})  # the same input, the same file
        plt.close(fig)
    svg = out.getvalue()
    return svg[svg.index("<svg") :]  # no XML prolog: a plain SVG document, as browsers take it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainer_state", help="trainer_state.json (its log_history)")
    parser.add_argument(
        "--summary", required=True, help="training_summary.json (best_step, best_eval_loss: the mark)"
    )
    parser.add_argument("--output", required=True, help="the SVG to write")
    parser.add_argument("--title", help="the plot's title (default: the run id of the summary)")
    args = parser.parse_args(argv)
    try:
        state = read_json_object(args.trainer_state, UserError, "the fetched trainer_state.json")
        summary = read_json_object(args.summary, UserError, "the fetch's training_summary.json")
        history = state.get("log_history")
        if not isinstance(history, list):
            raise UserError(f"{args.trainer_state}: no log_history list; is it a trainer_state.json?")
        title = args.title or f"{summary.get('run_id') or summary.get('run') or 'training'}: loss"
        write_atomic(args.output, loss_svg(history, summary, title).encode("utf-8"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
