"""Pod trouble, each ending with a clear message and the next step (issue 11's matrix):

 - the trainer is SIGKILLed (exit 137, as the kernel's OOM killer leaves it): resumed once, and
   not again after a second kill from the same point, with memory named as the likely cause;
 - a second `snakemake` on the same project while one runs: Snakemake's lock, and its message;
 - the pod's disk fills during training (a small tmpfs as remote_dir): the message says so and
   how to go on, and going on resumes from the last complete checkpoint;
 - the pod is replaced by one with a new host key and an empty disk: the changed key stops the
   wait at once, and a run gone from the pod trains again only when the user asks
   (`--config relaunch=RUN`), after a message that says what that costs.

Real sshd, real LLaMA-Factory on the tiny model, real `snakemake`, a real filesystem.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_train_interrupts import (
    complete_checkpoints,
    logged_steps,
    output_of,
    run_dir_of,
    start_snakemake,
    wait_until,
)

from helpers.processes import freeze, thaw
from helpers.sshd import Sshd, style_run_config
from helpers.workflow import LLAMAFACTORY_CLI, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.pod]

ADAPTER = "lora_adapters/style_peft"


def children(pid: int) -> list[int]:
    """The processes whose parent is pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def trainer_of(run_dir: Path) -> int | None:
    """The llamafactory-cli process of the run's live attempt (a child of run.sh), once the
    Trainer runs."""
    pid_file = run_dir / "pid"
    if not pid_file.exists() or not pid_file.read_text().strip():
        return None
    for child in children(int(pid_file.read_text())):
        try:
            if b"llamafactory-cli" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def trainings_started(run_dir: Path) -> int:
    log = run_dir / "train.log"
    return log.read_text(errors="replace").count("***** Running training *****") if log.exists() else 0


def attempt_starts(run_dir: Path) -> int:
    log = run_dir / "attempts.log"
    return log.read_text().count("start ") if log.exists() else 0


# ------------------------------------------- the OOM killer, twice; and a second snakemake


@pytest.fixture(scope="module")
def oom(tmp_path_factory, sshd, tiny_model):
    """Start a training, kill its trainer with SIGKILL, run again (it resumes), kill it again,
    run a third time. While the first snakemake follows, a second one is started beside it."""
    tmp = tmp_path_factory.mktemp("oom")
    work = tmp / "work"
    work.mkdir()
    # No checkpoint before the kills (save_steps beyond them): both attempts start at step 0.
    config = style_run_config(
        tmp, sshd.pod(tmp, LLAMAFACTORY_CLI), tiny_model, max_steps=3000, save_steps=2000, eval_steps=2000
    )
    seen: dict = {}
    first = start_snakemake(work, config, "first")
    run_dir = wait_until(
        lambda: (d := run_dir_of(tmp)) and len(logged_steps(d)) >= 3 and d,
        240,
        "the training to log a few steps",
        first,
    )
    # A second snakemake on the same project, same target, while the first one runs (its
    # training held meanwhile, so it spends no CPU on steps nobody looks at).
    freeze(run_dir)
    seen["second_call"] = snakemake(work, ADAPTER, configfile=config, check=False, timeout=120)
    seen["dry_run_beside"] = snakemake(work, "-n", ADAPTER, configfile=config, check=False, timeout=120)
    seen["attempts_beside"] = attempt_starts(run_dir)
    os.kill(trainer_of(run_dir), signal.SIGKILL)  # the OOM killer's way
    thaw(run_dir)  # run.sh sees its trainer killed
    first.wait(timeout=120)
    seen["first"] = (first.returncode, output_of(work, "first"))

    second = start_snakemake(work, config, "second")
    wait_until(
        lambda: trainings_started(run_dir) >= 2 and trainer_of(run_dir),
        240,
        "the resumed training to run",
        second,
    )
    os.kill(trainer_of(run_dir), signal.SIGKILL)
    second.wait(timeout=120)
    seen["second"] = (second.returncode, output_of(work, "second"))

    seen["third"] = snakemake(work, ADAPTER, configfile=config, check=False, timeout=300)
    return {"work": work, "run_dir": run_dir, "seen": seen}


def test_a_second_snakemake_on_the_project_is_refused_by_its_lock(oom):
    proc = oom["seen"]["second_call"]
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    # Snakemake's own words: what is locked, and what to do when no other snakemake runs.
    assert "Directory cannot be locked" in said, said[-3000:]
    assert str(oom["work"]) in said
    assert "--unlock" in said
    # A dry run beside it needs no lock: the plan can be looked at while a run goes on.
    dry = oom["seen"]["dry_run_beside"]
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    # Refused before any job: it launched nothing beside the first one's training.
    assert oom["seen"]["attempts_beside"] == 1


def test_a_trainer_killed_once_is_resumed_by_the_next_call(oom):
    rc, out = oom["seen"]["first"]
    assert rc != 0
    assert "killed by signal 9" in out
    assert "OOM killer" in out
    assert "the next `snakemake` call resumes from step 0" in out
    rc, out = oom["seen"]["second"]
    assert "resuming" in out


def test_killed_twice_from_the_same_point_is_not_resumed_again_and_names_memory(oom):
    rc, out = oom["seen"]["second"]
    assert rc != 0
    for said in (
        "killed (SIGKILL) twice",
        "OOM killer",
        "per_device_train_batch_size",
        "cutoff_len",
        "gradient_checkpointing",
        "not resumed automatically",
        "snakemake --forcerun submit_training style_mlx",
    ):
        assert said in out, (said, out[-3000:])
    third = oom["seen"]["third"]
    assert third.returncode != 0
    assert "not resumed" in third.stderr and "killed (SIGKILL) twice" in third.stderr
    # Nothing more was launched: two attempts, both killed (exit 137).
    ends = [
        line.split()[-1]
        for line in (oom["run_dir"] / "attempts.log").read_text().splitlines()
        if line.startswith("end ")
    ]
    assert ends == ["137", "137"]
    assert not (oom["work"] / ADAPTER).exists()


# ------------------------------------------------------------- the pod's disk fills up


@pytest.fixture
def small_disk(tmp_path):
    """A 512 MB tmpfs: the pod's volume, small enough to fill (and room for the checkpoints
    preflight counts: ~0.2 GB for the run below)."""
    mount = tmp_path / "volume"
    mount.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mount)]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root or sudo"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield mount
    umount = ["umount", "-l", str(mount)]
    subprocess.run(umount if os.geteuid() == 0 else ["sudo", "-n", *umount], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem holding path (another run's files, say)."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 2**20)
                handle.flush()
        except OSError:
            pass


def test_a_full_disk_during_training_says_so_and_resumes_once_freed(tmp_path, sshd, tiny_model, small_disk):
    work = tmp_path / "work"
    work.mkdir()
    pod = sshd.pod(tmp_path, LLAMAFACTORY_CLI, remote_dir=str(small_disk / "lora-runs"))
    config = style_run_config(tmp_path, pod, tiny_model, max_steps=100, save_steps=20, eval_steps=20)
    first = start_snakemake(work, config, "first")
    runs = small_disk / "lora-runs"
    run_dir = wait_until(
        lambda: runs.exists() and (d := next(runs.glob("style-*"), None)) and complete_checkpoints(d) and d,
        240,
        "a first checkpoint",
        first,
    )
    filler = small_disk / "someone-elses-files"
    fill(filler)
    first.wait(timeout=300)
    out = output_of(work, "first")
    assert first.returncode != 0
    assert "ended without finishing" in out
    assert "the pod's disk is full" in out, out[-3000:]
    assert f"in {runs}" in out and "du -sh" in out
    last = max(complete_checkpoints(run_dir))
    assert f"`snakemake --forcerun submit_training style_mlx` resumes from checkpoint-{last}" in out
    assert not (work / ADAPTER).exists()

    # Rerun unchanged, disk still full: nothing is relaunched into it.
    again = snakemake(work, ADAPTER, configfile=config, check=False)
    assert again.returncode != 0 and "the pod's disk is full" in again.stderr
    assert attempt_starts(run_dir) == 1

    filler.unlink()  # the user frees space, as told
    proc = snakemake(work, ADAPTER, "--forcerun", "submit_training", configfile=config)
    # (errors="replace": the full disk cut the log mid-character)
    log = (run_dir / "train.log").read_text(errors="replace")
    assert f"resuming from output/checkpoint-{last}" in log
    starts = [
        line.split()
        for line in (run_dir / "attempts.log").read_text().splitlines()
        if line.startswith("start ")
    ]
    assert len(starts) == 2 and int(starts[1][2]) == last
    assert (work / ADAPTER / "adapter_model.safetensors").is_file(), proc.stderr[-2000:]


# ------------------------------------- the pod replaced: a new host key and an empty disk


def test_a_replaced_pod_stops_at_once_and_relaunches_only_when_asked(tmp_path, tiny_model):
    work = tmp_path / "work"
    work.mkdir()
    old = Sshd(tmp_path / "old-pod").start()
    try:
        pod = old.pod(tmp_path, LLAMAFACTORY_CLI, gpu_hourly_usd=2.0, reconnect_minutes=3)
        config = style_run_config(tmp_path, pod, tiny_model, max_steps=10)
        snakemake(work, "results/style/train/launch.json", configfile=config)
        run_dir = run_dir_of(tmp_path)
        pid = int((run_dir / "pid").read_text())
        with_pgid = os.getpgid(pid)
    finally:
        old.stop()
    # The pod is replaced: its processes and its disk are gone, a new sshd (new host key) takes
    # the same address.
    os.killpg(with_pgid, signal.SIGKILL)
    shutil.rmtree(tmp_path / "pod")
    new = Sshd(tmp_path / "new-pod", client_key=old.client_key, port=old.port).start()
    try:
        start = time.monotonic()
        proc = snakemake(work, ADAPTER, configfile=config, check=False)
        took = time.monotonic() - start
        assert proc.returncode != 0
        assert "host key is not the one remembered" in proc.stderr, proc.stderr[-3000:]
        assert took < 60, f"a changed host key must stop at once, not retry for minutes ({took:.0f} s)"
        assert "lost contact" not in proc.stderr
        forget = re.search(r"`(ssh-keygen -R [^`]+)`", proc.stderr)
        assert forget, proc.stderr[-3000:]
        subprocess.run(forget[1], shell=True, check=True, capture_output=True)  # as the user would

        proc = snakemake(work, ADAPTER, configfile=config, check=False)
        assert proc.returncode != 0
        said = proc.stderr
        assert "has no folder style-" in said and "a new pod, or its volume was wiped" in said
        assert re.search(
            r"costs 10 steps, ~[\d.e-]+ GPU-hours, ~\$\d+\.\d\d \(the plan's estimate\)", said
        ), said[-3000:]
        assert "`snakemake --config relaunch=style style_mlx`" in said
        assert not (tmp_path / "pod").exists() or not list((tmp_path / "pod").glob("style-*")), (
            "nothing may be launched without the user asking"
        )

        proc = snakemake(work, ADAPTER, "--config", "relaunch=style", configfile=config)
        assert "training it again from step 0, as asked" in proc.stderr
        run_dir = run_dir_of(tmp_path)
        assert attempt_starts(run_dir) == 1
        assert (work / ADAPTER / "adapter_model.safetensors").is_file()
    finally:
        new.stop()


def test_relaunch_names_a_run_of_the_config(tmp_path, tiny_model, sshd):
    config = style_run_config(tmp_path, sshd.pod(tmp_path, LLAMAFACTORY_CLI), tiny_model)
    proc = snakemake(
        tmp_path / "work", "-n", ADAPTER, "--config", "relaunch=stlye", configfile=config, check=False
    )
    assert proc.returncode != 0
    assert "config: relaunch: no run 'stlye' under runs: (known: style" in proc.stdout + proc.stderr
