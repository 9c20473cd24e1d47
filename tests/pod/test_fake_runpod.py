"""The fake RunPod the provider is tested against: does it play RunPod's REST API v2 faithfully?

The fake plays RunPod's REST API v2 as of runpod/docs commit a900806 (spec version 2.0.0,
tests/fixtures/runpod_openapi_v2.json). A pod is rented, reached over SSH with a registered key
once `ssh.direct` appears, stopped, started on a new port with a new host key and its storage as
RunPod keeps it, and terminated; requests the spec refuses are refused with RFC 9457 problems;
every answer is checked against the spec.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from helpers.fake_runpod import (
    INSUFFICIENT_BALANCE,
    NO_FREE_GPUS,
    NO_INSTANCES,
    RATE_LIMITED,
    FakeRunPod,
    pod_processes,
)
from helpers.openapi import Spec, load_spec
from helpers.workflow import wait_until

USER_KEY = "rpa_USERKEY0123456789"
IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"

BODY = {
    "name": "lora-style",
    "image": IMAGE,
    "gpu": {"id": "NVIDIA A100-SXM4-80GB", "count": 2},
    "cloud": "SECURE",
    "disk": 50,
    "mounts": {"persistent": {"size": 100, "path": "/workspace"}},
    "ports": ["22/tcp"],
    "env": {"HF_HOME": "/workspace/hf", "QUOTED": "a 'b' \"c\" $(d)"},
    "startSsh": True,
}


@pytest.fixture
def runpod(tmp_path):
    """The fake, with the tests' key registered on the account."""
    fake = FakeRunPod(tmp_path / "runpod", user_key=USER_KEY).start()
    fake.ssh_keys = [fake.client_public_key]
    yield fake
    fake.stop()
    fake.assert_no_violations()


def api(runpod, method, path, key=USER_KEY, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, runpod.url + path, headers=headers, timeout=30, **kwargs)


def create(runpod, **changes) -> dict:
    answer = api(runpod, "POST", "/pods", json={**BODY, **changes})
    assert answer.status_code == 201, answer.text
    return answer.json()


def problem(answer: requests.Response, status: int) -> dict:
    """The RFC 9457 problem of an error answer."""
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    body = answer.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def running(runpod, pod_id, key=USER_KEY) -> tuple[dict, int]:
    """(the pod once ssh.direct appears, GETs it took), polling as a client must."""
    for polls in range(1, 20):
        pod = api(runpod, "GET", f"/pods/{pod_id}", key=key).json()
        if pod["ssh"]["direct"]:
            return pod, polls
    raise AssertionError(f"pod {pod_id} never showed ssh.direct")


def ssh(port, command, key, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(key),
            "-p",
            str(port),
            "127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def host_key(port) -> str:
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return scan.stdout.split()[-1]


def test_the_spec_is_runpods_v2_and_holds_every_operation_the_fake_plays():
    spec = Spec(load_spec())
    assert (spec.raw["openapi"], spec.raw["info"]["version"]) == ("3.1.0", "2.0.0")
    for method, path, operation in [
        ("GET", "/v2/pods", "listPods"),
        ("POST", "/v2/pods", "createPod"),
        ("GET", "/v2/pods/x", "getPod"),
        ("DELETE", "/v2/pods/x", "deletePod"),
        ("POST", "/v2/pods/x/action", "podAction"),
        ("GET", "/v2/account/ssh-keys", "getSshKeys"),
        ("PUT", "/v2/account/ssh-keys", "updateSshKeys"),
        ("GET", "/v2/catalog/gpus", "listGpuTypes"),
        ("GET", "/v2/billing/pods", "listPodBilling"),
        ("GET", "/v2/network-volumes/x", "getNetworkVolume"),
    ]:
        assert spec.match(path)[2][method].id == operation
    # Strictness: an object the spec leaves open is closed wherever it is used whole.
    pod = {
        "ssh": {
            "proxy": None,
            "direct": {"host": "h", "port": 1, "username": "u", "command": "c", "password": "x"},
        }
    }
    assert any(
        "$.ssh.direct: Unevaluated properties are not allowed ('password' was unexpected)" == p
        for p in spec.problems(pod, "/components/schemas/Pod")
    )


def test_a_pod_is_rented_reached_with_a_registered_key_and_terminated(runpod):
    pod = create(runpod)
    assert (pod["status"], pod["actions"], pod["ssh"]["direct"]) == (
        "PROVISIONING",
        ["stop", "terminate"],
        None,
    )
    assert pod["cost"] == pytest.approx(2 * 1.89)
    assert pod["gpu"] == {"id": "NVIDIA A100-SXM4-80GB", "count": 2}
    assert (pod["env"], pod["dataCenterId"], pod["cloud"]) == (BODY["env"], "EU-RO-1", "SECURE")
    assert pod["ssh"]["proxy"]["host"] == "ssh.runpod.test" and pod["runtime"] is None

    seen = [api(runpod, "GET", f"/pods/{pod['id']}").json()["status"]]
    pod, polls = running(runpod, pod["id"])
    assert seen + [pod["status"]] == ["STARTING", "RUNNING"] and polls == 1
    direct = pod["ssh"]["direct"]
    assert (direct["host"], direct["command"]) == (
        "127.0.0.1",
        f"ssh {direct['username']}@127.0.0.1 -p {direct['port']}",
    )
    assert pod["runtime"]["ports"] == [
        {"private": 22, "public": direct["port"], "type": "tcp", "ip": "127.0.0.1"}
    ]
    login = ssh(
        direct["port"],
        "echo $RUNPOD_POD_ID; echo $RUNPOD_TCP_PORT_22; "
        'echo $RUNPOD_PUBLIC_IP; echo "$QUOTED"; echo $RUNPOD_GPU_COUNT; '
        "echo $RUNPOD_DC_ID; echo $RUNPOD_API_KEY",
        runpod.client_key,
    )
    fake_pod = runpod.pods[pod["id"]]
    assert login.stdout.splitlines() == [
        pod["id"],
        str(direct["port"]),
        "127.0.0.1",
        BODY["env"]["QUOTED"],
        "2",
        "EU-RO-1",
        fake_pod.pod_key,
    ]
    assert ssh(direct["port"], "true", fake_pod.sshd.other_key, check=False).returncode == 255
    proxy = pod["ssh"]["proxy"]
    assert ssh(proxy["port"], "true", runpod.client_key, check=False).returncode == 255

    deleted = api(runpod, "DELETE", f"/pods/{pod['id']}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (
        problem(api(runpod, "GET", f"/pods/{pod['id']}"), 404)["detail"]
        == "The requested Pod does not exist."
    )
    assert api(runpod, "GET", "/pods").json() == {"pods": []}
    assert (fake_pod.status, fake_pod.sshd) == ("TERMINATED", None)
    assert not runpod.workspace_of(pod["id"]).exists(), "terminate destroys the persistent mount"
    billed = fake_pod.run_seconds
    time.sleep(0.1)
    assert billed > 0 and fake_pod.run_seconds == billed, "no billing once terminated"


def test_ssh_lets_in_the_keys_registered_at_create_and_only_with_startSsh(runpod):
    no_ssh = create(runpod, startSsh=False)
    runpod.ssh_keys = []
    no_keys = create(runpod, name="no-keys")
    runpod.ssh_keys = [runpod.client_public_key]  # too late for no_keys
    for pod in (no_ssh, no_keys):
        port = running(runpod, pod["id"])[0]["ssh"]["direct"]["port"]
        assert ssh(port, "true", runpod.client_key, check=False).returncode == 255
    listed = api(runpod, "GET", "/account/ssh-keys").json()
    assert listed == {"keys": [runpod.client_public_key]}


def test_stop_and_start_give_a_new_container_and_keep_the_persistent_mount(runpod):
    pod = create(runpod)
    workspace = runpod.workspace_of(pod["id"])
    fake_pod = runpod.pods[pod["id"]]
    assert workspace == runpod.root / "hosts" / fake_pod.machine_id / "workspace"
    assert runpod.workspace.resolve() == workspace, "the live pod's /workspace"
    port = running(runpod, pod["id"])[0]["ssh"]["direct"]["port"]
    ssh(port, f"echo checkpoint > {workspace}/adapter.txt", runpod.client_key)
    first_host_key = host_key(port)

    stopped = api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "stop"})
    assert stopped.status_code == 200
    seen = stopped.json()
    assert (seen["status"], seen["actions"], seen["cost"], seen["ssh"]["direct"], seen["runtime"]) == (
        "EXITED",
        ["start", "terminate"],
        0.0,
        None,
        None,
    )
    assert ssh(port, "true", runpod.client_key, check=False).returncode == 255
    assert (workspace / "adapter.txt").read_text() == "checkpoint\n"

    started = api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "start"})
    assert (started.status_code, started.json()["status"]) == (200, "STARTING")
    pod, polls = running(runpod, pod["id"])
    new_port = pod["ssh"]["direct"]["port"]
    assert new_port != port and polls == 2
    assert ssh(new_port, f"cat {workspace}/adapter.txt", runpod.client_key).stdout == "checkpoint\n"
    assert host_key(new_port) != first_host_key, "the container disk, /etc/ssh with it, is new"

    restarted = api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "restart"})
    assert restarted.json()["status"] == "STARTING"
    assert running(runpod, pod["id"])[0]["ssh"]["direct"]["port"] not in (port, new_port)
    assert (fake_pod.start_count, fake_pod.status) == (3, "RUNNING")
    assert (workspace / "adapter.txt").exists()


def test_without_a_mount_the_workspace_is_the_container_disk_wiped_at_stop(runpod):
    body = {k: v for k, v in BODY.items() if k != "mounts"}
    pod = api(runpod, "POST", "/pods", json=body).json()
    workspace = runpod.workspace_of(pod["id"])
    port = running(runpod, pod["id"])[0]["ssh"]["direct"]["port"]
    ssh(port, f"touch {runpod.workspace}/x", runpod.client_key)
    assert (workspace / "x").exists()
    api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "stop"})
    assert not (runpod.workspace / "x").exists()
    api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "start"})
    assert workspace.is_dir() and not any(workspace.iterdir())


def test_a_network_volume_outlives_its_pod_and_places_the_next_one(runpod):
    volume = runpod.add_network_volume("vol7x2k", data_center="US-TX-3", size=100)
    assert runpod.workspace_for_volume("vol7x2k") == volume
    assert api(runpod, "GET", "/network-volumes/vol7x2k").json() == {
        "id": "vol7x2k",
        "name": "vol7x2k",
        "size": 100,
        "dataCenter": "US-TX-3",
        "type": "STANDARD",
    }
    problem(api(runpod, "GET", "/network-volumes/nope"), 404)
    mounts = {"network": [{"volumeId": "vol7x2k", "path": "/workspace"}]}

    first = create(runpod, mounts=mounts)
    assert (first["dataCenterId"], runpod.workspace_of(first["id"])) == ("US-TX-3", volume)
    port = running(runpod, first["id"])[0]["ssh"]["direct"]["port"]
    ssh(port, f"echo data > {volume}/shard.txt", runpod.client_key)
    assert api(runpod, "POST", f"/pods/{first['id']}/action", json={"action": "terminate"}).status_code == 204
    assert (volume / "shard.txt").read_text() == "data\n"

    second = create(runpod, mounts=mounts, dataCenterIds=["EU-RO-1", "US-TX-3"])
    assert (second["dataCenterId"], runpod.pods[second["id"]].volume_id) == ("US-TX-3", "vol7x2k")
    port = running(runpod, second["id"])[0]["ssh"]["direct"]["port"]
    assert ssh(port, f"cat {runpod.workspace}/shard.txt", runpod.client_key).stdout == "data\n"

    assert (
        "US-TX-3"
        in problem(
            api(runpod, "POST", "/pods", json={**BODY, "mounts": mounts, "dataCenterIds": ["EU-RO-1"]}), 400
        )["detail"]
    )
    problem(
        api(
            runpod,
            "POST",
            "/pods",
            json={**BODY, "mounts": {"network": [{"volumeId": "nope", "path": "/workspace"}]}},
        ),
        404,
    )


@pytest.mark.parametrize(
    "change, words",
    [
        ({"gpuTypeIds": ["NVIDIA L40S"]}, ["$: Unevaluated properties", "'gpuTypeIds'"]),
        ({"imageName": IMAGE}, ["$: Unevaluated properties", "'imageName'"]),
        ({"image": 7}, ["$.image", "not of type 'string'"]),
        ({"cloud": "CHEAP"}, ["$.cloud", "'CHEAP' is not one of"]),
        ({"gpu": {"id": "NVIDIA L40S", "count": "2"}}, ["$.gpu.count", "not of type 'integer'"]),
        ({"gpu": {"id": "NVIDIA L40S", "count": 0}}, ["$.gpu.count", "minimum"]),
        ({"gpu": {"id": "NVIDIA L40S", "gpuCount": 2}}, ["$.gpu", "'gpuCount'"]),
        ({"env": {"SEED": 1}}, ["$.env.SEED", "not of type 'string'"]),
        (
            {"mounts": {"persistent": {"size": 5, "path": "/workspace"}}},
            ["$.mounts.persistent.size", "minimum of 10"],
        ),
        ({"mounts": {"volume": {"size": 50}}}, ["$.mounts", "'volume'"]),
        ({"startSsh": "yes"}, ["$.startSsh", "not of type 'boolean'"]),
    ],
)
def test_a_body_against_the_spec_is_a_422_naming_the_field(runpod, change, words):
    refused = problem(api(runpod, "POST", "/pods", json={**BODY, **change}), 422)
    assert (refused["title"], refused["detail"]) == ("Unprocessable Entity", "Request validation failed.")
    assert all(any(word in error for error in refused["errors"]) for word in words), refused
    assert runpod.pods == {}


def test_a_missing_image_is_a_422_and_rules_across_fields_are_400s(runpod):
    no_image = {k: v for k, v in BODY.items() if k != "image"}
    assert problem(api(runpod, "POST", "/pods", json=no_image), 422)["errors"] == [
        "$: 'image' is a required property"
    ]
    cpu = {"id": "cpu3c", "vcpuCount": 4}
    gpu_less = {k: v for k, v in BODY.items() if k not in ("gpu", "mounts")}
    for body, words in [
        (gpu_less, "Exactly one of gpu or cpu"),
        ({**BODY, "cpu": cpu}, "Exactly one"),
        (
            {
                **BODY,
                "mounts": {
                    "persistent": {"size": 20, "path": "/w"},
                    "network": [{"volumeId": "v", "path": "/v"}],
                },
            },
            "At most one",
        ),
        ({**gpu_less, "cpu": cpu, "mounts": BODY["mounts"]}, "mounts.persistent is invalid"),
        ({**gpu_less, "cpu": {"id": "cpu3c", "vcpuCount": 3}}, "power of two"),
        ({**BODY, "ports": ["22"]}, "PORT/tcp"),
    ]:
        assert words in problem(api(runpod, "POST", "/pods", json=body), 400)["detail"]
    assert (
        problem(api(runpod, "POST", "/pods", json={**BODY, "templateId": "tpl1"}), 404)["detail"]
        == "Template tpl1 not found."
    )
    for raw, content_type, status in [
        ("{not json", "application/json", 400),
        ("name=x", "application/x-www-form-urlencoded", 415),
        ("", "application/json", 400),
    ]:
        problem(
            requests.post(
                f"{runpod.url}/pods",
                data=raw,
                timeout=10,
                headers={"Authorization": f"Bearer {USER_KEY}", "Content-Type": content_type},
            ),
            status,
        )
    assert runpod.pods == {}

    cpu_pod = api(runpod, "POST", "/pods", json={**gpu_less, "cpu": cpu}).json()
    assert (cpu_pod["cpu"], cpu_pod["cudaVersion"], "gpu" in cpu_pod) == (
        {"id": "cpu3c", "vcpuCount": 4, "memory": 8},
        None,
        False,
    )


def test_gpus_out_of_stock_are_400s_with_runpods_words(runpod):
    runpod.unavailable = {"NVIDIA H100 80GB HBM3"}
    for gpu, cloud in [
        ({"id": "NVIDIA H100 80GB HBM3"}, "SECURE"),
        ({"id": "NVIDIA H200"}, "COMMUNITY"),  # Secure Cloud only
        ({"id": "NVIDIA L40S", "count": 9}, "SECURE"),
        ({"id": "NVIDIA L40S", "allowedCudaVersions": ["12.4"]}, "SECURE"),
        ({"id": "NVIDIA T1000"}, "SECURE"),
    ]:
        refused = api(runpod, "POST", "/pods", json={**BODY, "gpu": gpu, "cloud": cloud})
        assert problem(refused, 400)["detail"] == NO_INSTANCES, gpu
    assert runpod.pods == {}
    community = create(runpod, gpu={"id": "NVIDIA L40S", "count": 2}, cloud="COMMUNITY")
    assert community["cost"] == pytest.approx(2 * 0.69)


def test_v1_paths_are_gone_and_unmodelled_operations_say_so(runpod):
    base = runpod.url.removesuffix("/v2")
    for path in ("/v1/pods", "/pods", "/graphql"):
        answer = requests.get(base + path, headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=10)
        assert "v1 is retired" in problem(answer, 404)["detail"]
    pod = create(runpod)
    assert (
        "updatePod" in problem(api(runpod, "PATCH", f"/pods/{pod['id']}", json={"name": "x"}), 501)["detail"]
    )
    problem(api(runpod, "GET", f"/pods/{pod['id']}/logs"), 501)
    not_allowed = api(runpod, "PUT", f"/pods/{pod['id']}")
    assert problem(not_allowed, 405) and not_allowed.headers["Allow"] == "DELETE, GET, PATCH"
    problem(api(runpod, "GET", "/pod"), 404)
    assert api(runpod, "GET", "/openapi.json", key=None).json()["openapi"] == "3.1.0"


@pytest.mark.parametrize("key", ["rpa_WRONG", None])
def test_a_wrong_or_missing_key_is_a_401(runpod, key):
    problem(api(runpod, "GET", "/pods", key=key), 401)
    assert runpod.requests[-1].auth == "none"


def test_query_parameters_are_declared_and_typed(runpod):
    assert "includeClusterPods" in problem(api(runpod, "GET", "/pods", params={"name": "a"}), 400)["detail"]
    refused = problem(api(runpod, "GET", "/pods", params={"includeClusterPods": "yes"}), 422)
    assert refused["errors"] == ["query.includeClusterPods: 'yes' is not of type 'boolean'"]
    assert api(runpod, "GET", "/pods", params={"includeClusterPods": "true"}).status_code == 200


def test_actions_the_status_does_not_allow_are_409s(runpod):
    runpod.boot_polls = 0
    pod = create(runpod)
    action = f"/pods/{pod['id']}/action"
    assert "PROVISIONING" in problem(api(runpod, "POST", action, json={"action": "start"}), 409)["detail"]
    assert running(runpod, pod["id"])[1] == 1
    problem(api(runpod, "POST", action, json={"action": "start"}), 409)
    assert api(runpod, "POST", action, json={"action": "stop"}).status_code == 200
    for verb in ("stop", "restart"):
        problem(api(runpod, "POST", action, json={"action": verb}), 409)
    assert problem(api(runpod, "POST", action, json={"action": "reset"}), 422)["errors"]
    terminated = api(runpod, "POST", action, json={"action": "terminate"})
    assert (terminated.status_code, terminated.content) == (204, b"")
    problem(api(runpod, "POST", action, json={"action": "start"}), 404)
    problem(api(runpod, "DELETE", f"/pods/{pod['id']}"), 404)
    other = create(runpod, name="other")  # a booting pod may be stopped
    assert (
        api(runpod, "POST", f"/pods/{other['id']}/action", json={"action": "stop"}).json()["status"]
        == "EXITED"
    )


def test_the_pod_key_may_read_and_stop_its_own_pod_only(runpod):
    mine, other = create(runpod), create(runpod, name="other")
    key = runpod.pods[mine["id"]].pod_key
    assert api(runpod, "GET", f"/pods/{mine['id']}", key=key).status_code == 200
    for method, path, body in [
        ("POST", "/pods", BODY),
        ("GET", "/pods", None),
        ("GET", f"/pods/{other['id']}", None),
        ("POST", f"/pods/{other['id']}/action", {"action": "stop"}),
        ("POST", f"/pods/{mine['id']}/action", {"action": "terminate"}),
        ("POST", f"/pods/{mine['id']}/action", {"action": "restart"}),
        ("DELETE", f"/pods/{mine['id']}", None),
        ("GET", "/account/ssh-keys", None),
        ("GET", "/billing/pods", None),
    ]:
        problem(api(runpod, method, path, key=key, json=body), 403)
        assert runpod.requests[-1].auth == "pod"
    stopped = api(runpod, "POST", f"/pods/{mine['id']}/action", key=key, json={"action": "stop"})
    assert stopped.json()["status"] == "EXITED"
    assert [p.status for p in runpod.pods.values()] == ["EXITED", "PROVISIONING"]
    api(runpod, "DELETE", f"/pods/{mine['id']}")
    problem(api(runpod, "GET", f"/pods/{mine['id']}", key=key), 401)


def test_a_pod_stops_itself_with_runpodctl_and_its_processes_die(runpod, tmp_path):
    runpodctl = runpod.runpodctl_script(tmp_path / "bin" / "runpodctl")
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", "-s", "sh", str(runpodctl)], capture_output=True, text=True, check=False
        )
        assert lint.returncode == 0, lint.stdout
    usage = subprocess.run([runpodctl, "pod", "list"], capture_output=True, check=False)
    assert usage.returncode == 2
    pod = create(runpod)
    port = running(runpod, pod["id"])[0]["ssh"]["direct"]["port"]
    wrong = subprocess.run(
        [runpodctl, "pod", "stop", pod["id"]],
        capture_output=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "RUNPOD_API_KEY": "rpa_WRONG"},
    )
    assert wrong.returncode == 1 and runpod.requests[-1].auth == "none"

    ssh(port, "setsid nohup sleep 300 >/dev/null 2>&1 < /dev/null &", runpod.client_key)
    # (ssh returns when the login shell does: its detached child may not have started yet)
    wait_until(lambda: pod_processes(pod["id"]), 10, "the training to run on")
    ssh(port, f"{runpodctl} pod stop $RUNPOD_POD_ID", runpod.client_key, check=False)
    with runpod.lock:  # the fake has answered (the caller died with the pod)
        assert runpod.pods[pod["id"]].status == "EXITED"
    assert runpod.requests[-1][1:] == (f"/pods/{pod['id']}/action", {}, {"action": "stop"}, "pod")
    assert pod_processes(pod["id"]) == [], "stopping the container ends what ran in it"


def test_fail_next_answers_problems_with_retry_after_and_changes_nothing(runpod):
    runpod.fail_next("POST", "/pods", 429, RATE_LIMITED, retry_after=7)
    runpod.fail_next("POST", "/pods", 402, INSUFFICIENT_BALANCE)
    limited = api(runpod, "POST", "/pods", json=BODY)
    assert problem(limited, 429)["title"] == "Too Many Requests"
    assert limited.headers["Retry-After"] == "7"
    assert problem(api(runpod, "POST", "/pods", json=BODY), 402)["title"] == "Payment Required"
    assert runpod.pods == {}
    pod = create(runpod)
    runpod.fail_next("GET", r"/pods/\w+", 503, "upstream unavailable", times=2)
    for _ in range(2):
        unavailable = api(runpod, "GET", f"/pods/{pod['id']}")
        assert problem(unavailable, 503) and "Retry-After" not in unavailable.headers
    assert api(runpod, "GET", f"/pods/{pod['id']}").status_code == 200
    assert len(runpod.calls("POST", "/pods")) == 3


def test_drop_next_carries_the_request_out_but_loses_the_answer(runpod):
    runpod.drop_next("POST", "/pods")
    with pytest.raises(requests.ConnectionError):
        api(runpod, "POST", "/pods", json=BODY)
    listed = api(runpod, "GET", "/pods").json()["pods"]
    assert [p["name"] for p in listed] == ["lora-style"] and len(runpod.pods) == 1


def test_a_stopped_pod_whose_host_gpus_are_taken_cannot_start(runpod):
    pod = create(runpod)
    action = f"/pods/{pod['id']}/action"
    api(runpod, "POST", action, json={"action": "stop"})
    runpod.take_host_gpus(pod["id"])
    assert problem(api(runpod, "POST", action, json={"action": "start"}), 400)["detail"] == NO_FREE_GPUS
    assert runpod.pods[pod["id"]].status == "EXITED"
    runpod.release_host_gpus(pod["id"])
    assert api(runpod, "POST", action, json={"action": "start"}).status_code == 200


def test_runpod_may_stop_or_fail_a_pod_on_its_own(runpod):
    pod = create(runpod)
    port = running(runpod, pod["id"])[0]["ssh"]["direct"]["port"]
    runpod.interrupt(pod["id"])
    seen = api(runpod, "GET", f"/pods/{pod['id']}").json()
    assert (seen["status"], seen["ssh"]["direct"]) == ("EXITED", None)
    assert runpod.pods[pod["id"]].status_reason.startswith("Stopped by RunPod")
    assert ssh(port, "true", runpod.client_key, check=False).returncode == 255

    api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "start"})
    running(runpod, pod["id"])
    runpod.fail_pod(pod["id"], "CUDA error: uncorrectable ECC error encountered")
    seen = api(runpod, "GET", f"/pods/{pod['id']}").json()
    assert (seen["status"], seen["actions"], seen["ssh"]["direct"]) == ("ERROR", ["start", "terminate"], None)
    assert seen["cost"] > 0, "an errored pod still holds (and bills) its GPUs"
    problem(api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "stop"}), 409)
    api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "start"})
    assert running(runpod, pod["id"])[0]["status"] == "RUNNING"


def test_billing_records_sum_to_cost_times_time(runpod):
    runpod.boot_polls = 0
    pod = create(runpod)
    running(runpod, pod["id"])
    time.sleep(1)
    api(runpod, "POST", f"/pods/{pod['id']}/action", json={"action": "stop"})
    fake_pod = runpod.pods[pod["id"]]
    answer = api(runpod, "GET", "/billing/pods", params={"podId": pod["id"], "bucketSize": "hour"}).json()
    records = answer["records"]
    assert records and {r["podId"] for r in records} == {pod["id"]}
    gpu = sum(r["gpuAmount"] for r in records)
    assert gpu == pytest.approx(fake_pod.run_seconds / 3600 * 2 * 1.89, abs=1e-5)
    assert fake_pod.run_seconds >= 1
    assert all(r["diskAmount"] > 0 and r["cpuAmount"] == 0 for r in records)
    assert all(r["totalAmount"] == pytest.approx(r["gpuAmount"] + r["diskAmount"]) for r in records)
    meta = answer["metadata"]
    assert (
        meta["recordCount"],
        meta["uniquePodCount"],
        meta["query"]["podId"],
        meta["query"]["bucketSize"],
    ) == (len(records), 1, pod["id"], "hour")
    assert meta["totals"]["gpuAmount"] == pytest.approx(gpu)

    runpod.billing_lag_seconds = 3600
    lagging = api(runpod, "GET", "/billing/pods", params={"podId": pod["id"]}).json()
    assert lagging["records"] == [] and lagging["metadata"]["query"]["bucketSize"] == "day"
    problem(
        api(runpod, "GET", "/billing/pods", params={"lastN": 2, "startTime": "2026-01-01T00:00:00Z"}), 400
    )
    problem(api(runpod, "GET", "/billing/pods", params={"startTime": "yesterday"}), 422)


def test_the_catalog_quotes_prices_memory_and_stock(runpod):
    runpod.prices["NVIDIA L40S"] = 1.0
    runpod.unavailable = {"NVIDIA H100 80GB HBM3"}
    plain = {g["id"]: g for g in api(runpod, "GET", "/catalog/gpus").json()["gpus"]}
    assert plain["NVIDIA L40S"]["price"] == {"secure": 1.0, "community": 0.8}
    assert (plain["NVIDIA H200"]["memory"], plain["NVIDIA GeForce RTX 4090"]["memory"]) == (141, 24)
    assert "availability" not in plain["NVIDIA L40S"]

    def stock(**query):
        answer = api(
            runpod, "GET", "/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD", **query}
        )
        return {g["id"]: g for g in answer.json()["gpus"]}

    secure = stock(cloud="SECURE", count=2)
    assert secure["NVIDIA L40S"]["availability"] == "HIGH"
    assert {"id": "EU-RO-1", "name": "EU Romania 1", "availability": "HIGH"} in secure["NVIDIA L40S"][
        "dataCenters"
    ]
    assert secure["NVIDIA H100 80GB HBM3"]["availability"] == "NONE"
    assert "dataCenters" not in secure["NVIDIA H100 80GB HBM3"]
    assert stock(cloud="COMMUNITY")["NVIDIA H200"]["availability"] == "NONE"
    assert stock(count=16)["NVIDIA L40S"]["availability"] == "NONE"
    assert stock(countryCodes="JP") == {}

    for query, status in [
        ({"include": "AVAILABILITY"}, 400),
        ({"count": 2}, 400),
        ({"product": "POD"}, 400),
        ({"include": "STOCK", "product": "POD"}, 422),
    ]:
        problem(api(runpod, "GET", "/catalog/gpus", params=query), status)
    pod = create(runpod, gpu={"id": "NVIDIA L40S", "count": 2})
    assert pod["cost"] == pytest.approx(2.0)


def test_putting_ssh_keys_replaces_the_set_and_the_pattern_holds(runpod):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILXGDN/SclOozk1xsDztpmhGiKkkrfQB9SKoO8dSIQQZ me@x"
    replaced = api(runpod, "PUT", "/account/ssh-keys", json={"keys": [other]})
    assert replaced.json() == {"keys": [other]} and runpod.ssh_keys == [other]
    for body, words in [
        ({"keys": ["SHA256:abcdef"]}, "$.keys[0]"),
        ({"keys": [other], "replace": True}, "'replace'"),
        ({"key": [other]}, "'keys' is a required property"),
    ]:
        errors = problem(api(runpod, "PUT", "/account/ssh-keys", json=body), 422)["errors"]
        assert any(words in error for error in errors), errors
    assert api(runpod, "PUT", "/account/ssh-keys", json={"keys": []}).json() == {"keys": []}
    assert api(runpod, "GET", "/account/ssh-keys").json() == {"keys": []}


def test_an_answer_against_the_spec_is_a_500_and_a_violation(runpod, monkeypatch):
    pod = create(runpod)
    original = runpod._pod_json

    def broken(fake_pod):
        out = original(fake_pod)
        del out["actions"]
        out["ssh"]["proxy"]["password"] = "hunter2"
        return out

    monkeypatch.setattr(runpod, "_pod_json", broken)
    answer = problem(api(runpod, "GET", f"/pods/{pod['id']}"), 500)
    assert "'actions' is a required property" in answer["detail"]
    assert "$.ssh.proxy: Unevaluated properties are not allowed ('password'" in answer["detail"]
    assert len(runpod.violations) == 1
    with pytest.raises(AssertionError, match="broke its own spec"):
        runpod.assert_no_violations()
    runpod.violations.clear()
