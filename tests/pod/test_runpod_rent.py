"""Renting, recovering and giving back a RunPod pod through API v2, in-process and fast.

The fake (tests/helpers/fake_runpod.py) checks every request and answer against RunPod's v2 spec
and runs a real sshd behind every running pod, which lets in only the account's registered keys.
No training here (tests/pod/test_runpod.py trains through the graph): these pin what happens before
and around it, where the money is: keys, stock, a lost create answer, a pod in ERROR, a host
without GPUs, 429s and outages, the guard, the bill.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lora_style.training import runpod, runpod_account, shell
from lora_style.training.machines import make_executor
from lora_style.training.messages import PodError
from lora_style.training.runpod_api import RunPodAPI, RunPodError
from lora_style.training.settings import PodSettings

from helpers.fake_runpod import FakeRunPod

KEY_ENV = "LORA_TEST_RUNPOD_KEY"
USER_KEY = "rpa_TESTSECRET_0123456789abcdefghijklmnopqrstuv"
A100 = "NVIDIA A100-SXM4-80GB"


class Said(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, USER_KEY)
    server = FakeRunPod(tmp_path / "runpod", USER_KEY).start()
    server.ssh_keys = [Path(f"{server.client_key}.pub").read_text().strip()]
    yield server
    server.stop()
    server.assert_no_violations()


def settings_for(fake: FakeRunPod, tmp_path: Path, **extra) -> PodSettings:
    return PodSettings.from_entry(
        {
            "name": "rented",
            "executor": "ssh",
            "provider": "runpod",
            "api_url": fake.url,
            "api_key_env": KEY_ENV,
            "gpu_type": A100,
            "image": "runpod/pytorch:2.8.0",
            "identity_file": str(fake.client_key),
            "known_hosts": str(tmp_path / "known_hosts"),
            "remote_dir": str(fake.workspace / "lora-runs"),
            "poll_seconds": 0.2,
            "boot_minutes": 0.5,
            "api_retry_minutes": 0.2,
            **extra,
        }
    )


def live(fake: FakeRunPod) -> list:
    return [p for p in fake.pods.values() if p.status != "TERMINATED"]


def reaches(settings: PodSettings, tmp_path: Path) -> str:
    """What a real ssh login on the rented pod prints (its RUNPOD_POD_ID)."""
    ex = make_executor(settings, tmp_path)
    try:
        return ex.sh('echo "$RUNPOD_POD_ID"', timeout=60).text.strip()
    finally:
        ex.close()


# --------------------------------------------------------------------- rent -> reach -> release


def test_rents_with_the_v2_body_reaches_the_pod_through_ssh_direct_and_reads_the_bill(tmp_path, fake):
    settings, said = settings_for(fake, tmp_path), Said()
    rented = runpod.rent(settings, "style", tmp_path, said)
    (pod,) = fake.pods.values()
    body = pod.created_body
    assert body["gpu"] == {"id": A100, "count": 1} and body["startSsh"] is True
    assert body["ports"] == ["22/tcp"] and body["cloud"] == "SECURE"
    assert body["mounts"] == {"persistent": {"size": 100, "path": "/workspace"}}
    assert (rented.host, rented.port) == ("127.0.0.1", pod.sshd.port)
    assert rented.user == getpass.getuser() and rented.pod_usd_per_hour == pod.cost_per_hr
    assert reaches(rented, tmp_path) == pod.id
    assert "in stock in RunPod's SECURE cloud" in said.text()
    assert (tmp_path / ".state/runpod/catalog.json").exists(), "the plan prices from it"

    time.sleep(1.2)  # a second of billed time
    record = runpod.release(settings, "style", tmp_path, said)
    assert pod.status == "EXITED" and record["runs"] == {"style": "fetched"}
    bill = runpod_account.bill(settings, record)
    assert bill["gpu_usd"] == pytest.approx(pod.run_seconds / 3600 * pod.cost_per_hr, abs=1e-4)
    # Each figure is rounded to 4 decimals on its own, so the parts may sum 0.0001 or so away.
    assert bill["total_usd"] == pytest.approx(bill["gpu_usd"] + bill["disk_usd"] + bill["cpu_usd"], abs=2e-4)
    assert bill["pods"] == [pod.id] and bill["read_at"]
    # Every call named the user key in its header only: nothing on disk holds it.
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert USER_KEY.encode() not in path.read_bytes(), path


def test_a_retired_v1_url_is_refused_before_any_request(tmp_path, fake):
    settings = settings_for(fake, tmp_path, api_url="https://rest.runpod.io/v1")
    with pytest.raises(RunPodError, match="retired on 2026-11-15. Use v2: https://api.runpod.io/v2"):
        RunPodAPI(settings)
    # The fake refuses v1 paths too, in RunPod's problem format.
    import requests

    answer = requests.get(
        fake.url.replace("/v2", "/v1") + "/pods", timeout=10, headers={"Authorization": f"Bearer {USER_KEY}"}
    )
    assert answer.status_code == 404 and "v2" in answer.json()["detail"]


# ------------------------------------------------------------------------- a lost create answer


def test_a_create_whose_answer_is_lost_leaves_one_pod(tmp_path, fake):
    fake.drop_next("POST", "/pods")  # made, but the answer never arrives
    said = Said()
    rented = runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, said)
    assert len(fake.calls("POST", "/pods")) == 1, "not created twice"
    (pod,) = fake.pods.values()
    assert rented.pod_id == pod.id and pod.status == "RUNNING"
    assert "answer to the create was lost" in said.text() and "adopted, not rented twice" in said.text()


def test_a_create_answered_503_after_making_nothing_is_made_once_more(tmp_path, fake):
    fake.fail_next("POST", "/pods", 503, "upstream unavailable")
    runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said())
    assert len(fake.calls("POST", "/pods")) == 2 and len(fake.pods) == 1


# ----------------------------------------------------------------------- SSH keys before money


def test_an_unregistered_key_rents_nothing_and_says_the_fix(tmp_path, fake):
    fake.ssh_keys = []
    with pytest.raises(PodError) as caught:
        runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said())
    assert "not among your RunPod account's 0 registered SSH key(s)" in str(caught.value)
    assert "Settings -> SSH Public Keys" in str(caught.value)
    assert "register_ssh_key: true" in str(caught.value)
    assert fake.pods == {} and fake.calls("POST", "/pods") == []


def test_register_ssh_key_adds_ours_and_keeps_the_accounts_other_keys(tmp_path, fake):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILXGDN/SclOozk1xsDztpmhGiKkkrfQB9SKoO8dSIQQZ me@laptop"
    fake.ssh_keys = [other]
    rented = runpod.rent(settings_for(fake, tmp_path, register_ssh_key=True), "style", tmp_path, Said())
    ours = " ".join(Path(f"{fake.client_key}.pub").read_text().split()[:2])
    assert fake.ssh_keys[0] == other and fake.ssh_keys[1].startswith(ours)
    (put,) = fake.calls("PUT", "/account/ssh-keys")
    assert put.body["keys"][0] == other
    assert reaches(rented, tmp_path) == rented.pod_id, "the pod lets the registered key in"


# ----------------------------------------------------------------------------- stock and price


def test_a_gpu_out_of_stock_rents_nothing_and_names_what_is_in_stock(tmp_path, fake):
    fake.unavailable = {A100}
    need = {"memory_gb": 71.0, "steps": 600, "profile": "qwen25_32b_a100"}
    with pytest.raises(PodError) as caught:
        runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said(), need)
    text = str(caught.value)
    assert f"no {A100} is in stock in RunPod's SECURE cloud now; nothing was rented" in text
    assert "at least 71 GB a GPU" in text
    assert "NVIDIA H100 80GB HBM3 (80 GB" in text and "$2.99/h a GPU" in text
    assert "RTX 4090" not in text, "24 GB is too little for the run"
    assert "NVIDIA A100 80GB PCIe (80 GB" in text
    assert fake.pods == {} and fake.calls("POST", "/pods") == []


def test_the_plan_prices_from_the_catalog_read_and_says_how_old(tmp_path, fake):
    from lora_style.training import cost, runpod_catalog

    runpod_catalog.read_catalog(
        RunPodAPI(settings_for(fake, tmp_path)), settings_for(fake, tmp_path), tmp_path
    )
    listed = runpod_catalog.list_price(tmp_path, A100, "SECURE")
    assert listed[0] == fake.prices[A100] and listed[1] == "0 min ago"
    pod = PodSettings(name="rented", executor="ssh", gpu_type=A100, gpu_count=1)
    line = cost.estimate("style", {"max_steps": 600}, "qwen25_32b_a100", pod, None, listed).line()
    assert line.endswith(
        f"at ${fake.prices[A100]:.2f}/h = ~${600 / 84 * fake.prices[A100]:.2f} "
        "(84 steps/h from config/rates.yaml; RunPod's list price, read 0 min ago)"
    )


# -------------------------------------------------------------------- retries: 429 and outages


def test_a_429_is_waited_out_as_retry_after_says(tmp_path, fake):
    fake.fail_next(
        "GET", "/account/ssh-keys", 429, "rate limit exceeded for the minute window", retry_after=2
    )
    said = Said()
    start = time.monotonic()
    runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, said)
    assert time.monotonic() - start >= 2
    assert "answered 429 to GET" in said.text() and "retrying in 2 s" in said.text()


def test_an_outage_is_retried_aloud_then_ends_with_runpods_words(tmp_path, fake):
    fake.fail_next("GET", "/account/ssh-keys", 503, "maintenance", times=1000)
    said = Said()
    start = time.monotonic()
    with pytest.raises(RunPodError) as caught:
        runpod.rent(settings_for(fake, tmp_path, api_retry_minutes=0.1), "style", tmp_path, said)
    assert 3 <= time.monotonic() - start < 20
    assert caught.value.status == 503 and "maintenance" in str(caught.value)
    assert "RunPod's API answered 503" in said.text() and "giving up in" in said.text()
    assert fake.pods == {}


def test_a_refusal_carries_the_status_and_the_validation_errors(tmp_path, fake):
    fake.fail_next("POST", "/pods", 402, "insufficient balance")
    with pytest.raises(RunPodError) as caught:
        runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said())
    assert caught.value.status == 402 and "add credit (RunPod: Billing)" in str(caught.value)
    # A body the spec refuses comes back as 422 with RunPod's list of errors.
    api = RunPodAPI(settings_for(fake, tmp_path))
    with pytest.raises(RunPodError) as bad:
        api.create({"name": "x", "image": "y", "gpu": {"id": A100}, "gpuCount": 2})
    assert bad.value.status == 422 and bad.value.errors
    assert any("gpuCount" in error for error in bad.value.errors)


# ----------------------------------------------------------------------- a pod that fails, a host


def test_a_pod_in_error_while_booting_is_given_back(tmp_path, fake):
    fake.boot_polls = 10**6
    failure: list = []

    def rent():
        try:
            runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said())
        except PodError as exc:
            failure.append(exc)

    thread = threading.Thread(target=rent)
    thread.start()
    deadline = time.monotonic() + 20
    while not fake.pods and time.monotonic() < deadline:
        time.sleep(0.1)
    (pod,) = fake.pods.values()
    fake.fail_pod(pod.id, "container exited with code 1")
    thread.join(30)
    assert failure and "in ERROR while booting" in str(failure[0])
    assert pod.status == "TERMINATED", "made by the failing call: it does not stay"


def test_a_stopped_pod_whose_host_has_no_gpu_moves_to_a_new_pod_on_its_network_volume(tmp_path, fake):
    fake.add_network_volume("vol_lora", data_center="EU-SE-1")
    settings, said = settings_for(fake, tmp_path, network_volume_id="vol_lora"), Said()
    first = runpod.rent(settings, "style", tmp_path, said)
    old = fake.pods[first.pod_id]
    assert old.created_body["mounts"] == {"network": [{"volumeId": "vol_lora", "path": "/workspace"}]}
    assert old.created_body["dataCenterIds"] == ["EU-SE-1"] and old.data_center == "EU-SE-1"
    checkpoint = fake.workspace / "lora-runs/style-x/checkpoint-10"
    checkpoint.mkdir(parents=True)
    runpod.release(settings, "style", tmp_path, said)
    fake.take_host_gpus(old.id)

    second = runpod.rent(settings, "style", tmp_path, said)
    assert second.pod_id != old.id and old.status == "TERMINATED"
    assert checkpoint.is_dir(), "the checkpoints are on the network volume"
    assert reaches(second, tmp_path) == second.pod_id
    assert "renting a new one on network volume vol_lora" in said.text()


def test_without_a_network_volume_a_host_with_no_gpu_is_a_clear_error_and_the_pod_is_kept(tmp_path, fake):
    settings, said = settings_for(fake, tmp_path), Said()
    first = runpod.rent(settings, "style", tmp_path, said)
    runpod.release(settings, "style", tmp_path, said)
    fake.take_host_gpus(first.pod_id)
    with pytest.raises(PodError) as caught:
        runpod.rent(settings, "style", tmp_path, said)
    text = str(caught.value)
    assert "RunPod will not start it again" in text and "network_volume_id" in text
    assert "Its checkpoints stay on that host's volume" in text
    assert fake.pods[first.pod_id].status == "EXITED", "never terminated: its checkpoints"


def test_runpod_stopping_the_pod_is_noticed_by_asking_the_api(tmp_path, fake):
    settings = settings_for(fake, tmp_path)
    rented = runpod.rent(settings, "style", tmp_path, Said())
    runpod.check_running(settings, tmp_path)  # running: nothing to say
    fake.interrupt(rented.pod_id)
    with pytest.raises(runpod.PodStopped) as caught:
        runpod.check_running(settings, tmp_path)
    assert caught.value.status == "EXITED"


# ------------------------------------------------------------------------------------ the guard


def guard_env(tmp_path: Path, tools: list[str], pod, extra: list[str] = ()) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ["sh", "date", "cat", "sed", "tr", "head", "awk", "sleep", "flock", "mkdir", "rm", *tools]:
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    for path in extra:
        (bin_dir / Path(path).name).symlink_to(path)
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))  # a plain interpreter
    return {"PATH": str(bin_dir), "RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.pod_key}


def run_guard(tmp_path: Path, fake: FakeRunPod, env: dict, timeout: float = 60):
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    proc = subprocess.run(
        shell.argv("guard.sh", runs, 1, fake.url),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    return proc, (runs / "guard.log").read_text()


@pytest.mark.parametrize("with_curl", [True, False])
def test_the_guard_stops_its_pod_through_v2_with_the_pod_scoped_key(tmp_path, fake, with_curl):
    """guard.sh alone: nothing trains, so after IDLE_SECONDS it stops the pod it runs on, with
    curl, or with python3 where a pod has no curl; the key never on a command line or in its log."""
    rented = runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said())
    pod = fake.pods[rented.pod_id]
    env = guard_env(tmp_path, ["curl"] if with_curl else [], pod)
    proc, log = run_guard(tmp_path, fake, env)
    assert pod.status == "EXITED", (proc.stderr, log)
    (stop,) = fake.calls("POST", f"/pods/{pod.id}/action")
    assert stop.auth == "pod" and stop.body == {"action": "stop"}
    assert f"stopping pod {pod.id} through RunPod's API v2" in log and pod.pod_key not in log


def test_the_guard_falls_back_to_runpodctl_and_never_gives_up_while_the_pod_is_up(tmp_path, fake):
    rented = runpod.rent(settings_for(fake, tmp_path), "style", tmp_path, Said())
    pod = fake.pods[rented.pod_id]
    # The API refuses twice: the first try falls back to runpodctl (which fails too: it is
    # refused the same way), the guard waits and tries again, and the third call goes through.
    fake.fail_next("POST", f"/pods/{pod.id}/action", 500, "upstream error", times=3)
    ctl = fake.runpodctl_script(tmp_path / "ctl" / "runpodctl")
    env = guard_env(tmp_path, ["curl"], pod, [str(ctl)])
    runs = tmp_path / "runs"
    runs.mkdir()
    guard = subprocess.Popen(
        shell.argv("guard.sh", runs, 1, fake.url),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not (runs / ".guard_stop_failed").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (runs / ".guard_stop_failed").exists(), "the next job hears of it"
    facts = subprocess.run(
        shell.argv("guard_start.sh", runs, 1, fake.url, "exit 0"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "@@guard_failed" in facts and "could not stop pod" in facts
    assert guard.poll() is None, "still trying: the pod is up"
    guard.wait(timeout=60)
    log = (runs / "guard.log").read_text()
    assert pod.status == "EXITED" and "trying again in 2s" in log
    assert f"stopping pod {pod.id} with runpodctl" in log
    assert not (runs / ".guard_stop_failed").exists(), "a stop that worked leaves no alarm"
    assert pod.pod_key not in log
    assert {c.auth for c in fake.calls("POST", f"/pods/{pod.id}/action")} == {"pod"}


def test_ctrl_c_while_following_says_what_runpod_reports(tmp_path, fake, monkeypatch):
    import argparse

    from lora_style.training import remote_train

    monkeypatch.chdir(tmp_path)
    settings = settings_for(fake, tmp_path)
    rented = runpod.rent(settings, "style", tmp_path, Said())
    args = argparse.Namespace(command="wait")
    assert remote_train._stopped_message(args, settings).startswith(
        "stopped following; the training goes on on the pod"
    )
    fake.interrupt(rented.pod_id)
    message = remote_train._stopped_message(args, settings)
    assert f"RunPod reports pod {rented.pod_id} EXITED, so nothing trains there now" in message
    assert "goes on" not in message
