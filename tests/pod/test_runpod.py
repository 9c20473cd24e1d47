"""Renting the pod from the graph (provider: runpod), against a local RunPod.

tests/helpers/fake_runpod.py plays RunPod's REST API v2: it checks every request and answer
against the published OpenAPI spec and starts a real sshd on 127.0.0.1 for each running pod,
reachable only through ssh.direct and only with the account's registered keys (a new port and a
new host key after each start, the volume kept across stop/start). Training runs for real over
SSH with the tiny model, through the real graph. tests/pod/test_runpod_rent.py covers renting itself
(keys, stock, lost answers, retries, the guard) in-process.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from lora_style.training import runpod
from lora_style.training.settings import PodSettings

from helpers.fake_runpod import FakeRunPod
from helpers.processes import first_checkpoint, freeze, hold_until_budget_cut
from helpers.workflow import (
    LLAMAFACTORY_CLI,
    SAMPLE_DATA,
    snakemake,
    snakemake_argv,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.pod]

ADAPTER = "lora_adapters/style_peft"
KEY_ENV = "LORA_TEST_RUNPOD_KEY"
USER_KEY = "rpa_TESTSECRET_0123456789abcdefghijklmnopqrstuv"  # grepped for everywhere below


def rented_config(
    tmp: Path, fake: FakeRunPod, tiny_model: Path, pod: dict | None = None, **overrides
) -> Path:
    return write_config(
        tmp / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "rented",
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "overrides": {"max_steps": 10, **overrides},
                }
            },
            "pods": {
                "rented": {
                    "executor": "ssh",
                    "provider": "runpod",
                    "api_url": fake.url,
                    "api_key_env": KEY_ENV,
                    "gpu_type": "NVIDIA A100-SXM4-80GB",
                    "image": "runpod/pytorch:2.8.0-py3.11-cuda12.8.1",
                    "cloud_type": "SECURE",
                    "volume_gb": 20,
                    "container_disk_gb": 20,
                    "api_retry_minutes": 0.5,
                    "user": getpass.getuser(),
                    "identity_file": str(fake.client_key),
                    "known_hosts": str(tmp / "known_hosts"),
                    "remote_dir": str(fake.workspace / "lora-runs"),
                    "llamafactory_cli": str(LLAMAFACTORY_CLI),
                    "gpu_hourly_usd": 1.89,
                    "poll_seconds": 1,
                    "reconnect_minutes": 1,
                    "boot_minutes": 1,
                    **(pod or {}),
                }
            },
        },
    )


def run(work: Path, config: Path, *targets: str, check: bool = True, key: str | None = USER_KEY):
    env = {KEY_ENV: key} if key is not None else {}
    return snakemake(work, *(targets or (ADAPTER,)), configfile=config, check=check, env=env)


def the_pod(fake: FakeRunPod):
    (pod,) = [p for p in fake.pods.values() if p.status != "TERMINATED"]
    return pod


def files_holding(root: Path, text: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if text.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                pass
    return found


@pytest.fixture
def fake(tmp_path):
    server = FakeRunPod(tmp_path / "runpod", USER_KEY).start()
    server.ssh_keys = [Path(f"{server.client_key}.pub").read_text().strip()]
    yield server
    server.stop()
    server.assert_no_violations()


# -------------------------------------------- create -> train -> fetch -> stop, and a fetch again


def test_rents_trains_fetches_and_stops_the_pod(tmp_path, fake, tiny_model):
    config = rented_config(tmp_path, fake, tiny_model)
    work = tmp_path / "work"
    proc = run(work, config)
    assert len(fake.calls("POST", "/pods")) == 1
    pod = the_pod(fake)
    assert pod.status == "EXITED", "on_finish: stop"
    assert pod.created_body["gpu"] == {"id": "NVIDIA A100-SXM4-80GB", "count": 1}
    assert pod.created_body["ports"] == ["22/tcp"] and pod.created_body["startSsh"] is True
    assert "renting 1 x NVIDIA A100-SXM4-80GB" in proc.stderr
    assert "stopped: no GPU bills" in proc.stderr
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    # What RunPod billed, read back after the pod was stopped, beside the training's own time.
    bill = summary["runpod_bill"]
    assert bill["pods"] == [pod.id] and bill["read_at"]
    assert bill["gpu_usd"] == pytest.approx(pod.run_seconds / 3600 * pod.cost_per_hr, abs=2e-4)
    assert summary == json.loads((work / "results/style/train/training_summary.json").read_text())
    assert "RunPod billed $" in proc.stderr
    used = summary["gpu_time"]
    assert used["usd_per_hour"] == pytest.approx(pod.cost_per_hr)
    assert used["usd"] == pytest.approx(used["gpu_hours"] * pod.cost_per_hr, abs=0.01)
    assert 0 < used["wall_seconds"] < pod.run_seconds  # training is part of the billed time
    assert summary["estimate"]["steps"] == 10 and summary["cut_by_budget"] is False
    record = json.loads(runpod.state_path(PodSettings(name="rented"), work).read_text())
    assert record["id"] == pod.id and record["runs"] == {"style": "fetched"}

    # The API key is in no file the graph wrote (results, logs, .state), nor on the pod's volume.
    assert files_holding(work, USER_KEY) == []
    assert files_holding(fake.workspace, USER_KEY) == []
    assert USER_KEY not in (tmp_path / "known_hosts").read_text()

    # The adapter gone (or never fetched): the stopped pod is started for the download, then stopped.
    starts = pod.start_count
    for path in (work / ADAPTER, work / "results/style/train/training_summary.json"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    again = run(work, config)
    assert pod.start_count == starts + 1 and pod.status == "EXITED"
    assert len(fake.calls("POST", "/pods")) == 1
    assert "starting pod" in again.stderr and (work / ADAPTER / "adapter_model.safetensors").exists()
    # Nothing to do: no API call at all.
    calls = len(fake.requests)
    noop = run(work, config, "-n", ADAPTER)
    assert "Nothing to be done" in noop.stdout + noop.stderr and len(fake.requests) == calls


def test_a_dry_run_rents_nothing_and_shows_the_cost(tmp_path, fake, tiny_model, tripwire):
    env, calls = tripwire
    config = rented_config(tmp_path, fake, tiny_model)
    proc = snakemake(tmp_path / "work", "-n", ADAPTER, configfile=config, env={**env, KEY_ENV: USER_KEY})
    assert "style: 10 steps" in proc.stdout + proc.stderr
    assert fake.requests == [] and not calls.exists()


# ----------------------------------------------------------------- a crash after the creation


def test_a_pod_created_by_a_crashed_call_is_found_by_name_not_rented_twice(tmp_path, fake, tiny_model):
    """What a job killed between "created" and "recorded" leaves: a pod, and no record of it. The
    next call looks for it by name (through a rate limit, waited out) and uses it."""
    import requests

    config = rented_config(tmp_path, fake, tiny_model)
    work = tmp_path / "work"
    work.mkdir()
    name = runpod.pod_name(PodSettings(name="rented"), work)
    body = {
        "name": name,
        "gpu": {"id": "NVIDIA A100-SXM4-80GB", "count": 1},
        "image": "runpod/pytorch:2.8.0-py3.11-cuda12.8.1",
        "ports": ["22/tcp"],
        "startSsh": True,
        "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
    }
    created = requests.post(
        f"{fake.url}/pods", json=body, timeout=30, headers={"Authorization": f"Bearer {USER_KEY}"}
    )
    assert created.status_code == 201
    fake.fail_next("GET", "/pods", 429, "rate limit exceeded for the minute window", times=2, retry_after=1)
    proc = run(work, config)
    assert len(fake.calls("POST", "/pods")) == 1
    assert f"found pod {name}" in proc.stderr and the_pod(fake).id == created.json()["id"]
    assert len(fake.calls("GET", "/pods")) >= 3, "asked again after each 429"
    assert the_pod(fake).status == "EXITED"


# ----------------------------------------------------------------------- a failed training


def test_a_failed_training_stops_the_pod(tmp_path, fake, tiny_model):
    config = rented_config(tmp_path, fake, tiny_model, lora_target="no_such_proj")
    proc = run(tmp_path / "work", config, check=False)
    assert proc.returncode != 0 and "no_such_proj" in proc.stderr
    assert the_pod(fake).status == "EXITED"
    assert "stopped: no GPU bills" in proc.stderr


# --------------------------------------------------------- the idle guard, the laptop gone


def test_the_pod_stops_itself_when_idle_with_the_laptop_gone(tmp_path, fake, tiny_model):
    config = rented_config(tmp_path, fake, tiny_model, {"idle_stop_minutes": 0.1}, max_steps=20)
    work = tmp_path / "work"
    cmd = snakemake_argv(work, "--", ADAPTER, configfile=config)
    laptop = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, KEY_ENV: USER_KEY},
    )
    runs = fake.workspace / "lora-runs"
    wait_until(
        lambda: list(runs.glob("style-*/attempts.log")) and not (runs / ".hold").exists(),
        180,
        "the training to start",
        laptop,
    )
    os.killpg(laptop.pid, signal.SIGKILL)  # the laptop is gone: no snakemake, no fetch
    laptop.wait()
    pod = the_pod(fake)
    assert pod.status == "RUNNING"
    wait_until(lambda: pod.status == "EXITED", 240, "the pod to stop itself")
    (run_dir,) = runs.glob("style-*")
    assert (run_dir / "exit_code").read_text().strip() == "0", "stopped after the training, not during"
    stops = fake.calls("POST", f"/pods/{pod.id}/action")
    assert [(s.auth, s.body) for s in stops] == [("pod", {"action": "stop"})], (
        "by the pod itself, with its pod-scoped key"
    )
    assert "idle for 6s: stopping pod" in (runs / "guard.log").read_text()


# --------------------------------------------------------------------------- the budget


def test_a_budget_cuts_the_training_and_keeps_the_best_checkpoint(tmp_path, fake, tiny_model):
    config = rented_config(
        tmp_path,
        fake,
        tiny_model,
        {"max_hours": 0.01},  # 36 s of training
        # (LLaMA-Factory's start-up counts: 21 s saw no checkpoint under load)
        max_steps=5000,
        save_steps=10,
        eval_steps=10,
    )
    work = tmp_path / "work"
    log = tmp_path / "laptop.log"
    with open(log, "w") as out:
        laptop = subprocess.Popen(
            snakemake_argv(work, "--", ADAPTER, configfile=config),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, KEY_ENV: USER_KEY},
        )
    # Held after its first checkpoint: the budget's 36 s pass without the CPU training on.
    hold_until_budget_cut(first_checkpoint(fake.workspace / "lora-runs", laptop, timeout=240))
    assert laptop.wait(timeout=300) == 0, log.read_text()[-3000:]
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    assert summary["cut_by_budget"] is True
    assert 36 <= summary["gpu_time"]["wall_seconds"] < 90
    assert summary["best_step"] < 5000 and summary["best_step"] % 10 == 0
    assert "stopped by its budget" in log.read_text()
    assert the_pod(fake).status == "EXITED"
    assert (work / ADAPTER / "adapter_model.safetensors").exists()


def test_an_early_stop_ends_as_a_finished_run_the_pod_stopped(tmp_path, fake, tiny_model):
    """early_stopping on a rented pod: the training ends itself at step 60 of 20000 (learning
    rate 0: eval_loss never improves), the guard cuts nothing, the best checkpoint is fetched
    and the pod stopped, as after a last step."""
    config = rented_config(
        tmp_path, fake, tiny_model, max_steps=20000, learning_rate=0.0, eval_steps=20, save_steps=20
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"]["style"]["early_stopping"] = {"patience": 2}
    config.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    proc = run(work, config)
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    assert summary["stopped_early"] is True and summary["total_steps"] == 60
    assert summary["best_step"] == 20 and summary["cut_by_budget"] is False
    assert "stopped early at step 60 of 20000" in proc.stderr
    assert the_pod(fake).status == "EXITED" and "stopped: no GPU bills" in proc.stderr
    (run_dir,) = (fake.workspace / "lora-runs").glob("style-*")
    assert (run_dir / "exit_code").read_text().strip() == "0" and not (run_dir / "budget_cut").exists()


# ----------------------------------------------------------------------------- API errors


@pytest.mark.parametrize(
    "status,message,says",
    [
        (401, "invalid bearer token", f"RunPod refused the API key in ${KEY_ENV}"),
        (
            400,
            "There are no longer any instances available with the requested specifications. "
            "Please refresh and try again.",
            "no capacity for pods.rented.gpu_type",
        ),
        (402, "insufficient balance", "add credit"),
    ],
)
def test_api_errors_say_what_runpod_said_and_what_to_change(
    tmp_path, fake, tiny_model, status, message, says
):
    fake.fail_next("POST", "/pods", status, message)
    proc = run(tmp_path / "work", rented_config(tmp_path, fake, tiny_model), check=False)
    assert proc.returncode != 0
    assert f"RunPod said {status} while renting a pod: " in proc.stderr and message in proc.stderr
    assert says in proc.stderr
    assert fake.pods == {} and "Traceback" not in proc.stderr
    assert files_holding(tmp_path / "work", USER_KEY) == []


def test_a_missing_key_rents_nothing(tmp_path, fake, tiny_model):
    proc = run(tmp_path / "work", rented_config(tmp_path, fake, tiny_model), check=False, key=None)
    assert proc.returncode != 0
    assert f"the RunPod API key is read from ${KEY_ENV}, which is not set" in proc.stderr
    assert fake.requests == []


# ------------------------------------------------------------ two runs, one pod; a dead boot


def test_two_runs_on_one_pod_share_it_and_it_stops_after_the_last(tmp_path, fake, tiny_model):
    config = rented_config(tmp_path, fake, tiny_model)
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"]["other"] = {**cfg["runs"]["style"], "overrides": {"max_steps": 10, "seed": 7}}
    write_config(config, cfg)
    work = tmp_path / "work"
    proc = run(work, config, ADAPTER, "lora_adapters/other_peft")
    assert len(fake.calls("POST", "/pods")) == 1, "one pod for both runs"
    assert the_pod(fake).status == "EXITED"
    assert len(fake.calls("POST", r"/pods/\w+/action")) == 1, "stopped once, after the last fetch"
    assert "still training on it" in proc.stderr
    record = json.loads(runpod.state_path(PodSettings(name="rented"), work).read_text())
    assert record["runs"] == {"style": "fetched", "other": "fetched"}


def test_a_pod_that_never_answers_is_given_back(tmp_path, fake, tiny_model):
    fake.boot_polls = 10**6  # RunPod never reports an address
    config = rented_config(tmp_path, fake, tiny_model, {"boot_minutes": 0.05})
    proc = run(tmp_path / "work", config, check=False)
    assert proc.returncode != 0
    assert "did not answer on SSH within 0.05 min" in proc.stderr
    (pod,) = fake.pods.values()
    assert pod.status == "TERMINATED", "a pod rented by the failing call does not stay billing"


# ---------------------------------------------------- RunPod stops the pod in the middle of a run


def test_a_pod_runpod_stops_mid_training_is_started_and_resumed_in_the_same_call(tmp_path, fake, tiny_model):
    config = rented_config(tmp_path, fake, tiny_model, max_steps=60, save_steps=20, eval_steps=20)
    work = tmp_path / "work"
    cmd = snakemake_argv(work, "--", ADAPTER, configfile=config)
    log = tmp_path / "laptop.log"
    with open(log, "w") as out:  # a file, not a pipe nobody reads while it runs
        laptop = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, KEY_ENV: USER_KEY},
        )
    runs = fake.workspace / "lora-runs"
    wait_until(
        lambda: list(runs.glob("style-*/output/checkpoint-20/trainer_state.json")),
        240,
        "the first checkpoint",
        laptop,
    )
    pod = the_pod(fake)
    (run_dir,) = runs.glob("style-*")
    freeze(run_dir)  # held mid-training, as a 7-hour training would be, until RunPod stops it
    assert not (run_dir / "exit_code").exists(), "interrupted while it trains"
    fake.interrupt(pod.id)  # RunPod's maintenance, a balance at $0, ... (SIGTERM, then SIGKILL)
    laptop.wait(timeout=600)
    err = log.read_text()
    assert laptop.returncode == 0, err[-3000:]
    assert "stopped under this job" in err and "resuming" in err
    assert pod.start_count == 2 and pod.status == "EXITED"
    assert len(fake.calls("POST", "/pods")) == 1, "the same pod, started again"
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    assert summary["gpu_time"]["attempts"] == 2 and summary["total_steps"] == 60
