"""The checkpoint choice (scripts/best_checkpoint.py): the guide's loss table selects step 600."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.dom.minidom

from lora_style.training import best_checkpoint

from helpers.workflow import REPO

# The guide's "Training Results" table: step -> (train loss, val loss).
GUIDE_TABLE = {
    100: (1.013, 0.977),
    200: (0.720, 0.703),
    400: (0.293, 0.402),
    600: (0.131, 0.358),
    800: (0.044, 0.392),
    1500: (0.029, 0.473),
}


def guide_trainer_state() -> dict:
    """A trainer_state.json as LLaMA-Factory writes it for the guide's 1500-step run."""
    history = []
    for step in range(10, 1501, 10):
        train = GUIDE_TABLE.get(step, (max(0.03, 1.1 * 0.997**step), None))[0]
        history.append({"epoch": step / 209, "learning_rate": 1e-4, "loss": train, "step": step})
        if step in GUIDE_TABLE:
            history.append({"epoch": step / 209, "eval_loss": GUIDE_TABLE[step][1], "step": step})
    return {"global_step": 1500, "max_steps": 1500, "log_history": history}


# --------------------------------------------------------------------- the checkpoint choice


def test_guide_loss_table_selects_step_600(tmp_path):
    """The guide found step 600 of 1500 best; the pipeline finds it from trainer_state.json, and
    the loss plot (scripts/loss_plot.py, over the choice) marks it."""
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(guide_trainer_state()))
    checkpoints = list(range(100, 1501, 100))  # save_steps: 100
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "best_checkpoint.py"),
            str(path),
            "--checkpoints",
            *map(str, checkpoints),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout) == {
        "best_step": 600,
        "best_eval_loss": 0.358,
        "selected_by": "min_eval_loss",
    }
    (tmp_path / "choice.json").write_text(proc.stdout)  # training_summary.json's keys
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "loss_plot.py"),
            str(path),
            "--summary",
            str(tmp_path / "choice.json"),
            "--output",
            str(tmp_path / "loss.svg"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    svg = (tmp_path / "loss.svg").read_text()
    xml.dom.minidom.parseString(svg)  # well-formed
    assert "chosen: step 600, eval_loss 0.358" in svg


def test_only_saved_checkpoints_can_be_chosen():
    history = guide_trainer_state()["log_history"]
    # save_total_limit kept only the last checkpoints: the best one left is step 800.
    assert best_checkpoint.select_checkpoint(history, [800, 1000, 1500]).step == 800


def test_no_evaluation_falls_back_to_the_last_checkpoint():
    history = [e for e in guide_trainer_state()["log_history"] if "eval_loss" not in e]
    choice = best_checkpoint.select_checkpoint(history, [500, 1000, 1500])
    assert (choice.step, choice.eval_loss, choice.selected_by) == (1500, None, "last_checkpoint")


def test_ties_choose_the_earlier_step():
    history = [{"step": 5, "eval_loss": 1.0}, {"step": 10, "eval_loss": 1.0}]
    assert best_checkpoint.select_checkpoint(history, [5, 10]).step == 5
