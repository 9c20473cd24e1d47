"""Early stopping, the results table and the rates the plan learns, with real LLaMA-Factory (the
`local` executor, as `make demo`) on the tiny model.

The run is made to stop: `learning_rate: 0.0` leaves the adapter at its start, so eval_loss is the
same at every evaluation and never improves. With `early_stopping: {patience: 2}` and an evaluation
every 20 steps, LLaMA-Factory's EarlyStoppingCallback must stop it at step 60 (best at 20, no
better at 40 and 60) of its 20000: a run that trained on would take many minutes and fail every
assertion. (60 steps, not fewer: on an idle machine 15 tiny steps take under the one second that
LLaMA-Factory's elapsed_time, the projection's clock, resolves.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from lora_style.report import pages
from lora_style.training import cost

from helpers.processes import freeze
from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, snakemake, snakemake_argv, write_config

pytestmark = [pytest.mark.slow, pytest.mark.pod]

EVERY, MAX_STEPS, PATIENCE = 20, 20000, 2
STOP = EVERY * (PATIENCE + 1)  # the first evaluation is the best; PATIENCE more without a better one
PRICE = 36.0  # $/h, so a few seconds cost cents


def style_config(tmp: Path, pod: dict | None = None, **run) -> Path:
    """The run `style` on this machine (the local executor), or on `pod` (the test sshd)."""
    return write_config(
        tmp / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(run.pop("base_model")),
                    "profile": "tiny_cpu",
                    "pod": "here",
                    "early_stopping": {"patience": PATIENCE},
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "samples": {"count": 1, "max_tokens": 8},
                    "overrides": {
                        "learning_rate": 0.0,
                        "max_steps": MAX_STEPS,
                        "eval_steps": EVERY,
                        "save_steps": EVERY,
                        "include_num_input_tokens_seen": True,  # the learned rate's tokens/s
                    },
                    **run,
                }
            },
            "pods": {
                "here": {
                    **(pod or {"executor": "local", "remote_dir": "pod"}),
                    "poll_seconds": 1,
                    "llamafactory_cli": str(LLAMAFACTORY_CLI),
                    "gpu_hourly_usd": PRICE,
                    # 20000 steps (minutes) would pass this; the early stop at step 60 (seconds) does not.
                    "max_hours": 0.05,
                }
            },
        },
    )


def eval_steps_of(run_dir: Path) -> list[int]:
    lines = (run_dir / "output" / "trainer_log.jsonl").read_text().splitlines()
    return [e["current_steps"] for e in map(json.loads, lines) if e.get("eval_loss") is not None]


def planned_jobs(dry_run: str) -> set[str]:
    """The rules of a dry run's job stats table."""
    table = dry_run.split("Job stats:", 1)[1].split("total", 1)[0].splitlines()
    return {line.split()[0] for line in table[3:] if line.strip()}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_model):
    """The run trained, stopped early, fetched, converted and reported (style_mlx)."""
    tmp = tmp_path_factory.mktemp("early")
    config = style_config(tmp, base_model=tiny_model)
    work = tmp / "work"
    started = time.monotonic()
    proc = snakemake(work, "style_mlx", configfile=config)
    took = time.monotonic() - started
    launch = json.loads((work / "results/style/train/launch.json").read_text())
    return {
        "tmp": tmp,
        "work": work,
        "config": config,
        "out": proc.stderr,
        "took": took,
        "run_dir": work / "pod" / launch["run_id"],
        "summary": json.loads((work / "lora_adapters/style_peft/training_summary.json").read_text()),
        "finished": json.loads((work / "results/style/train/finished.json").read_text()),
        "launch": launch,
        "state": json.loads((work / "results/style/train/trainer_state.json").read_text()),
    }


def test_a_run_whose_eval_loss_stops_improving_stops_early_and_is_fetched_and_converted(stopped):
    work, summary, run_dir = stopped["work"], stopped["summary"], stopped["run_dir"]
    assert eval_steps_of(run_dir) == [EVERY, 2 * EVERY, STOP]
    assert stopped["state"]["global_step"] == STOP < MAX_STEPS
    assert summary["total_steps"] == STOP and summary["max_steps"] == MAX_STEPS
    assert summary["stopped_early"] is True and stopped["finished"]["status"] == "finished"
    assert f"stopped early at step {STOP} of {MAX_STEPS}" in stopped["out"]
    # The best checkpoint (the first evaluation: the later ones are no better) is the adapter.
    assert summary["best_step"] == EVERY and summary["selected_by"] == "min_eval_loss"
    assert (work / "lora_adapters/style_peft/adapter_model.safetensors").read_bytes() == (
        run_dir / f"output/checkpoint-{EVERY}/adapter_model.safetensors"
    ).read_bytes()
    assert (work / "lora_adapters/style_mlx/adapters.safetensors").stat().st_size > 0
    assert f"stopped early: step {STOP} of {MAX_STEPS}" in (work / "results/style/train/loss.svg").read_text()
    # The budget was never reached: no cut, and the guard saw the run end by itself.
    assert summary["cut_by_budget"] is False and not (run_dir / "budget_cut").exists()
    assert (run_dir / "exit_code").read_text().strip() == "0"


def test_the_progress_line_projects_the_finish_the_cost_and_the_budgets_step(stopped):
    """As soon as a few steps have timed the rate: the projected finish and cost, and the step
    at which max_hours would end the 20000 steps, said once, long before it would."""
    log = (stopped["work"] / "logs/style/wait_training.log").read_text()
    projected = [line for line in log.splitlines() if "projected: done in ~" in line]
    assert projected and "in all at most (early stopping may end it sooner)" in projected[0]
    first = re.search(r"elapsed (\d+):(\d\d):(\d\d)", projected[0]).groups()
    assert int(first[0]) == 0 and int(first[1]) == 0, projected[0]  # within the first minute
    said = rf"the budget \(max_hours 0.05\) stops the training at about step (\d+) of {MAX_STEPS}"
    (cut,) = re.findall(said, log)
    assert STOP < int(cut) < MAX_STEPS


def test_the_results_table_is_the_trainer_states_log_history_priced(stopped):
    summary, history = stopped["summary"], stopped["state"]["log_history"]
    rows = summary["results_table"]
    evals = [e for e in history if "eval_loss" in e]
    assert [(r["step"], r["epoch"], r["eval_loss"]) for r in rows] == [
        (e["step"], e["epoch"], e["eval_loss"]) for e in evals
    ]
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}  # logging_steps: 1
    assert [r["train_loss"] for r in rows] == [losses[r["step"]] for r in rows]
    paid = summary["gpu_time"]
    assert paid["usd_per_hour"] == PRICE and paid["gpus"] == 1
    for row in rows:  # dollars = the price x the time paid up to that step
        assert row["gpu_hours"] == pytest.approx(paid["gpu_hours"] * row["step"] / STOP, abs=1e-6)
        assert row["usd"] == pytest.approx(row["gpu_hours"] * PRICE, abs=1e-3)
    assert rows[-1]["usd"] == pytest.approx(paid["usd"], abs=0.01)
    assert [r["notes"] for r in rows] == [["best"], [], []]  # equal losses: no rise, no overfitting
    assert summary["advice"].startswith(
        f"stopped early at step {STOP} of {MAX_STEPS}: eval loss had not improved for 2 evaluations"
    )
    page = pages.training_page("style", summary, stopped["finished"], stopped["launch"])
    assert "Results, per evaluation" in page and "Next run: stopped early" in page
    report = (stopped["work"] / "results/style/report/training.html").read_text()
    assert "Results, per evaluation" in report and f"${rows[-1]['usd']:.2f}" in report


def test_the_next_plan_uses_the_measured_rate_and_the_dry_run_reruns_what_changed(stopped):
    work, tmp, summary = stopped["work"], stopped["tmp"], stopped["summary"]
    (learned,) = cost.read_learned(work)
    assert learned["run_id"] == summary["run_id"] and learned["steps"] == STOP
    assert learned["steps_per_hour"] == pytest.approx(STOP / summary["wall_time_s"] * 3600, rel=1e-3)
    assert (learned["profile"], learned["gpu_type"], learned["gpus"]) == ("tiny_cpu", "default", 1)
    seen = max(e.get("num_input_tokens_seen", 0) for e in stopped["state"]["log_history"])
    assert seen > 0 and summary["tokens_seen"] == seen
    assert learned["tokens_per_second"] == pytest.approx(seen / summary["wall_time_s"], abs=0.1)
    # A second run of the same kind: its plan prices it at this run's rate, and says so.
    cfg = yaml.safe_load(stopped["config"].read_text())
    cfg["runs"]["again"] = cfg["runs"]["style"]
    plan = snakemake(work, "again_mlx", "-n", configfile=write_config(tmp / "second.yaml", cfg))
    rate = (
        f"{cost.rate_text(learned['steps_per_hour'])} steps/h measured on your last 1 run (.state/rates.json)"
    )
    said = plan.stdout + plan.stderr
    assert f"again: up to {MAX_STEPS} steps" in said and rate in said, said
    # Editing patience retrains; editing the report's threshold rewrites only the report pages.
    cfg = yaml.safe_load(stopped["config"].read_text())
    cfg["runs"]["style"]["early_stopping"] = {"patience": 3}
    patience = snakemake(work, "style_mlx", "-n", configfile=write_config(tmp / "patience.yaml", cfg))
    assert {"train_yaml", "submit_training", "wait_training"} <= planned_jobs(patience.stdout)
    cfg["runs"]["style"]["early_stopping"] = {"patience": PATIENCE}
    cfg["runs"]["style"]["results_table"] = {"overfitting_share": 0.25}
    share = snakemake(work, "style_mlx", "-n", configfile=write_config(tmp / "share.yaml", cfg))
    assert planned_jobs(share.stdout) == {"report_pages", "style_mlx"}, share.stdout


def test_a_run_killed_after_a_non_improving_evaluation_stops_at_the_same_step(
    tmp_path, tiny_model, sshd, stopped
):
    """On the test sshd, killed once checkpoint-40 (whose saved state counts one evaluation
    without improvement) is written, and resumed: transformers restores the count
    (restore_callback_states_from_checkpoint), so it stops at step 60 as the uninterrupted run
    did, not at 80."""
    config = style_config(tmp_path, sshd.pod(tmp_path, LLAMAFACTORY_CLI), base_model=tiny_model)
    work = tmp_path / "work"
    out = open(tmp_path / "first.out", "w")
    first = subprocess.Popen(
        snakemake_argv(work, "lora_adapters/style_peft", configfile=config),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pod = tmp_path / "pod"  # the sshd pod's remote_dir
    deadline = time.monotonic() + 300
    while True:  # poll often: steps 41-60 take a few seconds
        found = (
            list(pod.glob(f"style-*/output/checkpoint-{2 * EVERY}/trainer_state.json"))
            if pod.exists()
            else []
        )
        if found:
            break
        assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.out").read_text()
        time.sleep(0.02)
    run_dir = found[0].parents[2]
    group = os.getpgid(int((run_dir / "pid").read_text()))
    freeze(run_dir)  # held where it is: before step 60's evaluation
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "output").glob("checkpoint-*"))
    assert saved == [EVERY, 2 * EVERY], "the kill came too late to test the resume"
    state = json.loads(found[0].read_text())
    counter = state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]
    assert counter == {"early_stopping_patience_counter": 1}
    os.killpg(group, signal.SIGKILL)  # the pod's process dies
    first.wait(timeout=120)
    assert first.returncode != 0

    proc = snakemake(work, "lora_adapters/style_peft", configfile=config)
    assert "resuming" in proc.stderr
    attempts = (run_dir / "attempts.log").read_text().splitlines()
    assert [a.split()[-1] for a in attempts if a.startswith("start")] == ["0", str(2 * EVERY)]
    log = (run_dir / "train.log").read_text()  # transformers' own account of the resume
    assert f"global step {2 * EVERY}" in log and "restoring any callbacks" in log
    summary = json.loads((work / "lora_adapters/style_peft/training_summary.json").read_text())
    assert summary["total_steps"] == stopped["summary"]["total_steps"] == STOP
    assert eval_steps_of(run_dir)[-1] == STOP and summary["stopped_early"] is True
