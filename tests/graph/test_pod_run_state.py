"""A run folder's state, run.sh, launch.sh and the messages, run for real with sh (lora_style/training/*.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from lora_style.training import launch, messages, run_state, shell

from helpers.processes import freeze, thaw
from helpers.workflow import wait_until

# ------------------------------------------------------------------------ states and messages


@pytest.mark.parametrize(
    "line,status",
    [
        ("launched=1 alive=1 pid=42 rc= checkpoint=10 final=0", "running"),
        ("launched=1 alive=0 pid=42 rc=0 checkpoint=20 final=1", "finished"),
        ("launched=1 alive=0 pid=42 rc=137 checkpoint=10 final=0", "killed"),
        ("launched=1 alive=0 pid=42 rc=1 checkpoint= final=0", "failed"),
        ("launched=1 alive=0 pid=42 rc= checkpoint=15 final=0", "died"),
        ("launched=0 alive=0 pid= rc= checkpoint= final=0", "new"),
    ],
)
def test_run_states(line, status):
    state = run_state.parse_state({"dir": ["/w"], "run": [line]})
    assert state.status == status
    assert run_state.parse_state({"dir": ["/w"], "no_run_dir": [""]}).status == "new"


def test_an_answer_cut_short_is_not_a_run_that_never_started():
    """A poll whose shell died before its @@run line (a dropped connection under load) must not
    read as "not started", which tells the user a live run's checkpoints are gone: it is an
    unreachable pod, which the follower retries."""
    with pytest.raises(messages.Unreachable, match="cut short"):
        run_state.parse_state({"dir": ["/w"]})
    with pytest.raises(messages.Unreachable):
        run_state.parse_state({})


@pytest.mark.parametrize(
    "log,expected",
    [
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            "per_device_train_batch_size to 1",
        ),
        ("ModuleNotFoundError: No module named 'bitsandbytes'", "pip install bitsandbytes>=0.39.0"),
        (
            "ValueError: Undefined dataset style_sft in dataset_info.json.",
            "must match a key in dataset_info.json",
        ),
    ],
)
def test_failures_get_the_guides_troubleshooting_hint(log, expected):
    state = run_state.parse_state(
        {"dir": ["/w"], "run": ["launched=1 alive=0 pid=1 rc=1 checkpoint= final=0"]}
    )
    assert expected in messages.hint_for(f"...\n{log}\n", state, "style", "runpod")


def test_a_killed_run_is_told_it_will_resume():
    state = run_state.parse_state(
        {"dir": ["/w"], "run": ["launched=1 alive=0 pid=1 rc=137 checkpoint=35 final=0"]}
    )
    assert "resumes from checkpoint-35" in messages.hint_for("Killed\n", state, "style", "p")


def test_progress_line():
    line = messages.format_progress(
        {"current_steps": 300, "total_steps": 600, "elapsed_time": "3:30:00", "remaining_time": "3:30:00"},
        0.293,
        0.402,
    )
    assert line.startswith("step 300/600 [############------------]  50.0%")
    assert "loss 0.2930" in line and "eval_loss 0.4020" in line and "remaining 3:30:00" in line


def test_run_sh_resumes_from_the_newest_complete_checkpoint(tmp_path):
    """run.sh for real, with a stand-in for llamafactory-cli that prints its arguments."""
    fake = tmp_path / "fake-cli"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\nexit 3\n')
    fake.chmod(0o755)
    run = tmp_path / "run"
    (run / "output" / "checkpoint-5").mkdir(parents=True)
    (run / "output" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run / "output" / "checkpoint-10").mkdir()  # no trainer_state.json: cut off mid-save
    (run / "run.sh").write_text(shell.script("run.sh"))
    assert subprocess.run(["sh", str(run / "run.sh"), str(fake)]).returncode == 3
    log = (run / "train.log").read_text()
    assert (
        "ARGS train train.yaml resume_from_checkpoint=output/checkpoint-5 overwrite_output_dir=false" in log
    )
    assert (run / "exit_code").read_text().strip() == "3"
    assert run_state.parse_attempts((run / "attempts.log").read_text())[0]["from_step"] == 5


def test_input_hash_keys_the_run_folder(tmp_path, tiny_model):
    (tmp_path / "train.yaml").write_text(f"model_name_or_path: {tiny_model}\nlora_rank: 8\n")
    (tmp_path / "train.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    (tmp_path / "dataset_info.json").write_text("{}")
    load = lambda: launch.RunFiles.load(
        "style", *(str(tmp_path / n) for n in ("train.yaml", "train.jsonl", "dataset_info.json"))
    )
    first = load()
    assert first.run_id == load().run_id and first.run_id.startswith("style-")
    assert "base_model" in first.sha256
    (tmp_path / "train.jsonl").write_text('{"instruction": "a", "input": "", "output": "c"}\n')
    assert load().run_id != first.run_id


def test_launch_falls_back_to_setsid_nohup_and_never_starts_twice(tmp_path):
    """The launch script for real: a broken tmux, a stand-in trainer; a second launch attaches."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tmux").write_text("#!/bin/sh\nexit 1\n")  # present but failing
    trainer = bin_dir / "trainer"
    trainer.write_text("#!/bin/sh\nsleep 2\necho trained\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    run = tmp_path / "runs" / "style-abc"
    run.mkdir(parents=True)
    (run / "run.sh").write_text(shell.script("run.sh"))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def launch():
        out = subprocess.run(
            shell.argv("launch.sh", run, "lora-style-abc", trainer),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        ).stdout
        return shell.parse_markers(out)

    first = launch()
    assert first["detach"] == ["setsid nohup"] and first["pid"][0].isdigit()
    again = launch()
    assert again["already"] == first["pid"]  # alive: attached, not started
    state_of = lambda: run_state.parse_state(
        shell.parse_markers(
            subprocess.run(
                shell.argv("state.sh", run.parent, run.name), capture_output=True, text=True
            ).stdout
        )
    )
    assert state_of().status == "running"
    deadline = time.monotonic() + 30
    while state_of().status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state_of().status == "finished"
    assert (run / "attempts.log").read_text().count("start ") == 1
    assert "trained" in (run / "train.log").read_text()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_freeze_holds_a_training_that_tmux_runs(tmp_path):
    """The tests' freeze (tests/helpers/processes.py) on launch.sh's own tmux session, with a
    stand-in trainer that ticks: frozen, it ticks no more; thawed, it goes on. (tmux resumes a
    pane whose process stops, so freeze stops only what runs below run.sh, and checks it held.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trainer = bin_dir / "trainer"
    trainer.write_text("#!/bin/sh\nwhile :; do echo tick >>ticks; sleep 0.05; done\n")
    trainer.chmod(0o755)
    run = tmp_path / "runs" / "style-abc"
    run.mkdir(parents=True)
    (run / "run.sh").write_text(shell.script("run.sh"))
    ticks = lambda: len((run / "ticks").read_text().splitlines()) if (run / "ticks").exists() else 0
    out = subprocess.run(
        shell.argv("launch.sh", run, "lora-style-abc", trainer), capture_output=True, text=True, timeout=60
    ).stdout
    try:
        assert shell.parse_markers(out)["detach"] == ["tmux"], out
        wait_until(lambda: ticks() >= 3, 30, "the stand-in trainer to tick")
        assert freeze(run)
        held = ticks()
        time.sleep(0.5)
        assert ticks() == held, "the frozen trainer went on"
        thaw(run)
        wait_until(lambda: ticks() > held, 10, "the thawed trainer to tick again")
    finally:
        subprocess.run(["tmux", "-L", "lora-style-abc", "kill-server"], capture_output=True)


def test_only_this_folders_own_run_sh_counts_as_alive(tmp_path):
    """A pid that runs another folder's run.sh (a pid reused after a pod restart) is not alive."""
    script = shell.script("launch.sh")
    # Every way of starting it runs run.sh by the absolute path the state script matches.
    assert "here=$(pwd -P)" in script and script.count('sh "$here/run.sh"') == 3
    runs = (tmp_path / "runs").resolve()
    for name in ("style-abc", "style-abc2", "other"):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.sh").write_text("sleep 30\necho done\n")  # sh stays the process

    def status_with(cmd: list[str]) -> str:
        proc = subprocess.Popen(cmd)
        try:
            (runs / "style-abc" / "pid").write_text(f"{proc.pid}\n")
            out = subprocess.run(
                shell.argv("state.sh", runs, "style-abc"), capture_output=True, text=True
            ).stdout
            return run_state.parse_state(shell.parse_markers(out)).status
        finally:
            proc.kill()
            proc.wait()

    assert status_with(["sh", str(runs / "style-abc" / "run.sh")]) == "running"
    assert status_with(["sh", str(runs / "other" / "run.sh")]) == "died"
    assert status_with(["sh", str(runs / "style-abc2" / "run.sh")]) == "died"
    assert status_with(["sleep", "30"]) == "died"
