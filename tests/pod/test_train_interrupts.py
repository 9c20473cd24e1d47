"""The expensive node under the guide's "Connection dropped" row, and worse.

Real sshd, real LLaMA-Factory, real `snakemake`, interrupted for real:
 - the local snakemake is stopped (Ctrl-C) while it follows the training, then run again;
 - sshd stops listening for a while during wait, then comes back;
 - the training process on the pod is killed mid-run, then snakemake is run again.
A training is held where a test needs it by freezing its processes (SIGSTOP, then SIGCONT:
helpers/processes.py), never with sleeps, and is only as long as the test needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.processes import freeze, thaw
from helpers.sshd import style_run_config
from helpers.workflow import LLAMAFACTORY_CLI, snakemake, snakemake_argv, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.pod]

ADAPTER = "lora_adapters/style_peft"
STEPS = 300  # the followed training's max_steps: it goes on through an interruption and an outage


def start_snakemake(work: Path, config: Path, name: str) -> subprocess.Popen:
    """snakemake in its own process group, as in a terminal (so Ctrl-C reaches all of it)."""
    out = open(work.parent / f"{name}.out", "w")
    cmd = snakemake_argv(work, "--", ADAPTER, configfile=config)
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def output_of(work: Path, name: str) -> str:
    return (work.parent / f"{name}.out").read_text()


def run_dir_of(tmp: Path) -> Path | None:
    found = (
        [p for p in (tmp / "pod").glob("style-*") if (p / "run.sh").exists()]
        if (tmp / "pod").exists()
        else []
    )
    return found[0] if found else None


def logged_steps(run_dir: Path) -> list[int]:
    """current_steps of every train-loss entry LLaMA-Factory logged, in file order."""
    path = run_dir / "output" / "trainer_log.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("loss") is not None:
            steps.append(entry["current_steps"])
    return steps


def newest_step(run_dir: Path | None) -> int:
    steps = logged_steps(run_dir) if run_dir else []
    return steps[-1] if steps else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def complete_checkpoints(run_dir: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in (run_dir / "output").glob("checkpoint-*")
        if (p / "trainer_state.json").exists()
    )


# ------------------------------------------- Ctrl-C of the local snakemake, then an sshd outage


@pytest.fixture(scope="module")
def followed(tmp_path_factory, sshd, tiny_model):
    """Ctrl-C snakemake mid-wait; run it again; stop sshd while it follows; start sshd again."""
    tmp = tmp_path_factory.mktemp("follow")
    work = tmp / "work"
    work.mkdir()
    config = style_run_config(
        tmp, sshd.pod(tmp, LLAMAFACTORY_CLI), tiny_model, max_steps=STEPS, save_steps=100, eval_steps=100
    )
    seen: dict = {}

    first = start_snakemake(work, config, "first")
    run_dir = wait_until(
        lambda: (d := run_dir_of(tmp)) and newest_step(d) >= 50 and d, 240, "training to reach step 50", first
    )
    seen["pid"] = int((run_dir / "pid").read_text())
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the terminal
    first.wait(timeout=60)
    seen["first_rc"] = first.returncode
    seen["step_at_interrupt"] = newest_step(run_dir)
    seen["alive_after_interrupt"] = alive(seen["pid"])
    wait_until(
        lambda: newest_step(run_dir) >= seen["step_at_interrupt"] + 10,
        60,
        "training to go on without snakemake",
    )

    # Held where it is while the second snakemake starts and attaches (a real training has hours
    # left here; this one would be done), then let go before the outage.
    freeze(run_dir)
    wait_log = work / "logs/style/wait_training.log"
    wait_log.unlink(missing_ok=True)  # (snakemake starts a job's log anew anyway)
    second = start_snakemake(work, config, "second")

    def new_wait_log() -> str:
        return wait_log.read_text() if wait_log.exists() else ""

    wait_until(
        lambda: "following" in new_wait_log() and " step " in new_wait_log().split("following", 1)[1],
        120,
        "the second snakemake to follow the training",
        second,
    )
    seen["reattach_log"] = new_wait_log()
    seen["step_at_reattach"] = newest_step(run_dir)
    thaw(run_dir)
    sshd.stop()  # the pod's sshd goes away ...
    outage_start = newest_step(run_dir)
    time.sleep(6)
    seen["steps_during_outage"] = newest_step(run_dir) - outage_start
    sshd.start()  # ... and comes back
    second.wait(timeout=300)
    seen["second_rc"] = second.returncode
    seen["second_out"] = output_of(work, "second")
    return {"tmp": tmp, "work": work, "run_dir": run_dir, "seen": seen}


def test_ctrl_c_then_rerun_follows_the_same_process_to_the_end(followed):
    seen, run_dir, work = followed["seen"], followed["run_dir"], followed["work"]
    assert seen["first_rc"] != 0
    assert seen["alive_after_interrupt"], "Ctrl-C of snakemake must not stop the training"
    assert seen["step_at_reattach"] < STEPS, "the rerun must find the training still running"
    assert f"running (pid {seen['pid']})" in seen["reattach_log"]
    assert seen["second_rc"] == 0, seen["second_out"][-3000:]
    # No second training: LLaMA-Factory's Trainer started once, every step was trained once.
    assert (run_dir / "train.log").read_text().count("***** Running training *****") == 1
    assert (run_dir / "attempts.log").read_text().count("start ") == 1
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    assert json.loads((work / ADAPTER / "training_summary.json").read_text())["total_steps"] == STEPS


def test_sshd_outage_during_wait_is_ridden_out(followed):
    seen, work = followed["seen"], followed["work"]
    assert seen["steps_during_outage"] > 0, "the training goes on on the pod while sshd is down"
    assert "lost contact with the pod while following the training" in seen["second_out"]
    assert seen["second_rc"] == 0
    assert "finished" in (work / "logs/style/wait_training.log").read_text()
    assert (work / ADAPTER / "adapter_model.safetensors").is_file()


# ------------------------------------------------------ the training killed on the pod, resumed


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, sshd, tiny_model):
    work = tmp_path / "work"
    work.mkdir()
    config = style_run_config(
        tmp_path,
        sshd.pod(tmp_path, LLAMAFACTORY_CLI),
        tiny_model,
        max_steps=100,
        save_steps=25,
        eval_steps=25,
    )
    first = start_snakemake(work, config, "first")
    run_dir = wait_until(
        lambda: (
            (d := run_dir_of(tmp_path))
            and len(complete_checkpoints(d)) >= 2
            and newest_step(d) % 25 >= 3
            and d
        ),
        240,
        "two checkpoints",
        first,
    )
    freeze(run_dir)  # held between its second and third checkpoint ...
    pid = int((run_dir / "pid").read_text())
    os.killpg(os.getpgid(pid), signal.SIGKILL)  # ... where the pod's process dies (a pod restart)
    last = max(complete_checkpoints(run_dir))
    killed_at = newest_step(run_dir)
    assert killed_at < 100, "killed before its end"
    first.wait(timeout=120)
    out = output_of(work, "first")
    assert first.returncode != 0
    assert "ended without finishing" in out
    assert f"resumes from checkpoint-{last}" in out
    assert not (work / ADAPTER).exists()

    proc = snakemake(work, ADAPTER, configfile=config)
    assert "resuming" in proc.stderr
    attempts = (run_dir / "attempts.log").read_text().splitlines()
    assert [a.split()[0] for a in attempts if a.startswith("start")] == ["start", "start"]
    assert attempts[-2].split()[-1] == str(last)  # the second attempt started from checkpoint-<last>
    log = (run_dir / "train.log").read_text()
    # transformers' own account of where it went on:
    assert "Resuming training from checkpoint with epoch" in log
    assert f"global step {last}" in log
    steps = logged_steps(run_dir)
    restart = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert steps.count(1) == 1, "training never went back to step 0"
    if restart:  # steps logged after the checkpoint are redone
        assert steps[restart[0]] == last + 1
    assert steps[-1] == 100
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    assert summary["total_steps"] == 100
    state = json.loads((run_dir / "output/trainer_state.json").read_text())
    assert state["global_step"] == 100
