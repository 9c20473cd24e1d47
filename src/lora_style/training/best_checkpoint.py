"""Choose the checkpoint to keep (the guide's "Training Results").

The guide found step 600 of 1500 best: validation loss bottoms out there and climbs 32 % by the
end. The pipeline finds that step from ``trainer_state.json`` (``log_history``: ``eval_loss`` per
evaluation) instead of assuming it: the saved checkpoint with the lowest ``eval_loss``, or the last
checkpoint when the run had no evaluation.

    python scripts/best_checkpoint.py output/trainer_state.json --checkpoints 100 200 300

It prints the choice as JSON (best_step, best_eval_loss, selected_by: training_summary.json's
keys). The loss curves with this choice marked are drawn by scripts/loss_plot.py, a rule of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

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
    return {
        int(e["step"]): float(e["eval_loss"])
        for e in log_history
        if "eval_loss" in e and "step" in e and e["eval_loss"] is not None
    }


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
    note = (
        "no evaluation in log_history"
        if not evals
        else f"evaluations at steps {sorted(evals)[:5]}... never fall on a saved checkpoint; make "
        "save_steps a multiple of eval_steps to choose by eval_loss"
    )
    return Selection(last, None, "last_checkpoint", note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainer_state", help="trainer_state.json (its log_history)")
    parser.add_argument(
        "--checkpoints", type=int, nargs="+", required=True, help="steps that have a saved checkpoint-N"
    )
    args = parser.parse_args(argv)
    history = json.loads(Path(args.trainer_state).read_text(encoding="utf-8")).get("log_history", [])
    choice = select_checkpoint(history, args.checkpoints)
    print(
        json.dumps(
            {"best_step": choice.step, "best_eval_loss": choice.eval_loss, "selected_by": choice.selected_by}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
