"""The fake RunPod the provider is tested against: does it play RunPod's REST API v1 faithfully?

A pod is rented, reached over SSH once its address appears, stopped, started on a new port with a
new host key and its volume intact, and terminated; requests the spec refuses are refused.
"""

from __future__ import annotations

import subprocess

import pytest
import requests

from helpers.fake_runpod import (NO_INSTANCES, TOO_MANY_REQUESTS, FakeRunPod, json_schema,
                                 load_spec, pod_processes)

USER_KEY = "rpa_USERKEY0123456789"

BODY = {
    "name": "lora-style",
    "imageName": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
    "gpuTypeIds": ["NVIDIA A100-SXM4-80GB"],
    "gpuCount": 2,
    "cloudType": "SECURE",
    "containerDiskInGb": 50,
    "volumeInGb": 100,
    "volumeMountPath": "/workspace",
    "ports": ["22/tcp"],
    "env": {"HF_HOME": "/workspace/hf", "QUOTED": "a 'b' \"c\" $(d)"},
    "supportPublicIp": True,
    "interruptible": False,
}


@pytest.fixture
def runpod(tmp_path):
    fake = FakeRunPod(tmp_path / "runpod", user_key=USER_KEY).start()
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


def wait_for_address(runpod, pod_id, key=USER_KEY) -> tuple[str, int, int]:
    """(ip, ssh port, GETs it took), polling as a client must."""
    for polls in range(1, 20):
        pod = api(runpod, "GET", f"/pods/{pod_id}", key=key).json()
        if pod["publicIp"] and pod["portMappings"]:
            return pod["publicIp"], pod["portMappings"]["22"], polls
    raise AssertionError(f"pod {pod_id} never got an address")


def ssh(runpod, port, command, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
         "-i", str(runpod.client_key), "-p", str(port), "127.0.0.1", command],
        capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def host_key(port) -> str:
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=30, check=True)
    return scan.stdout.split()[-1]


def test_a_pod_is_rented_reached_stopped_started_and_terminated(runpod):
    pod = create(runpod)
    assert pod["desiredStatus"] == "RUNNING"
    assert pod["costPerHr"] == pytest.approx(2 * 1.89)
    assert pod["gpu"] == {"id": "NVIDIA A100-SXM4-80GB", "count": 2,
                          "displayName": "A100-SXM4-80GB"}
    assert pod["env"] == BODY["env"]
    assert pod["publicIp"] == "" and pod["portMappings"] == {}, "no address before it has booted"
    assert len(pod["id"]) == 14 and pod["id"].isalnum() and pod["id"].islower()

    ip, port, polls = wait_for_address(runpod, pod["id"])
    assert (ip, polls) == ("127.0.0.1", 2)
    login = ssh(runpod, port, 'echo $RUNPOD_POD_ID; echo $RUNPOD_TCP_PORT_22; '
                              'echo $RUNPOD_PUBLIC_IP; echo "$QUOTED"; echo $OMP_NUM_THREADS; '
                              'echo $RUNPOD_GPU_COUNT')
    assert login.stdout.splitlines() == [pod["id"], str(port), "127.0.0.1", BODY["env"]["QUOTED"],
                                         "1", "2"]
    ssh(runpod, port, f"echo checkpoint > {runpod.workspace}/adapter.txt")
    first_host_key = host_key(port)

    stopped = api(runpod, "POST", f"/pods/{pod['id']}/stop")
    assert (stopped.status_code, stopped.content) == (200, b"")
    seen = api(runpod, "GET", f"/pods/{pod['id']}").json()
    assert (seen["desiredStatus"], seen["publicIp"], seen["portMappings"]) == ("EXITED", "", {})
    assert ssh(runpod, port, "true", check=False).returncode == 255, "nobody listens any more"
    assert (runpod.workspace / "adapter.txt").read_text() == "checkpoint\n", "stop keeps the volume"

    assert api(runpod, "POST", f"/pods/{pod['id']}/start").status_code == 200
    _, new_port, polls = wait_for_address(runpod, pod["id"])
    assert new_port != port and polls == 2
    assert ssh(runpod, new_port, f"cat {runpod.workspace}/adapter.txt").stdout == "checkpoint\n"
    assert host_key(new_port) != first_host_key, "the container disk, /etc/ssh with it, is new"

    fake_pod = runpod.pods[pod["id"]]
    assert (fake_pod.start_count, fake_pod.status, fake_pod.port) == (2, "RUNNING", new_port)

    deleted = api(runpod, "DELETE", f"/pods/{pod['id']}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    gone = api(runpod, "GET", f"/pods/{pod['id']}")
    assert (gone.status_code, gone.json()) == (404, {"error": "pod not found", "status": 404})
    assert not runpod.workspace.exists(), "terminate wipes the volume"
    assert api(runpod, "GET", "/pods").json() == []
    assert (fake_pod.status, fake_pod.sshd) == ("TERMINATED", None)
    billed = fake_pod.run_seconds
    assert billed > 0 and runpod.pods[pod["id"]].run_seconds == billed, "no billing once terminated"
    assert fake_pod.cost_usd == pytest.approx(billed / 3600 * 2 * 1.89)
    assert len(runpod.calls("POST", "/pods")) == 1


def test_a_pod_stops_itself_with_its_own_key_and_its_processes_die(runpod):
    pod = create(runpod)
    _, port, _ = wait_for_address(runpod, pod["id"])
    ssh(runpod, port, "setsid nohup sleep 300 >/dev/null 2>&1 < /dev/null &")
    assert pod_processes(pod["id"]), "the training runs on"

    done = ssh(runpod, port, f'curl -sS -X POST -H "Authorization: Bearer $RUNPOD_API_KEY" '
                             f'{runpod.url}/pods/$RUNPOD_POD_ID/stop', check=False)
    with runpod.lock:            # the fake has answered (curl, killed with the pod, cannot tell)
        assert runpod.pods[pod["id"]].status == "EXITED", done.stderr
    assert runpod.requests[-1][1:] == (f"/pods/{pod['id']}/stop", {}, None, "pod")
    assert pod_processes(pod["id"]) == [], "stopping the container ends what ran in it"


def test_the_pod_key_may_only_read_and_stop_its_own_pod(runpod):
    mine, other = create(runpod), create(runpod, name="other")
    key = runpod.pods[mine["id"]].pod_key
    assert key != USER_KEY and runpod.pods[other["id"]].pod_key != key
    assert api(runpod, "GET", f"/pods/{mine['id']}", key=key).status_code == 200
    for method, path in [("POST", "/pods"), ("GET", "/pods"), ("GET", f"/pods/{other['id']}"),
                         ("POST", f"/pods/{other['id']}/stop"), ("DELETE", f"/pods/{mine['id']}"),
                         ("POST", f"/pods/{mine['id']}/start")]:
        refused = api(runpod, method, path, key=key, json=BODY if path == "/pods" else None)
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized",
                                                               "status": 401})
    assert api(runpod, "POST", f"/pods/{mine['id']}/stop", key=key).status_code == 200
    assert [p.status for p in runpod.pods.values()] == ["EXITED", "RUNNING"]
    assert len(runpod.pods) == 2


@pytest.mark.parametrize("key", ["rpa_WRONG", None])
def test_a_wrong_or_missing_key_is_unauthorized(runpod, key):
    answer = api(runpod, "GET", "/pods", key=key)
    assert (answer.status_code, answer.json()) == (401, {"error": "Unauthorized", "status": 401})
    assert runpod.requests[-1].auth == "none"


@pytest.mark.parametrize("change, words", [
    ({"gpuTypeId": ["NVIDIA A100-SXM4-80GB"]}, ["gpuTypeId", "unexpected"]),
    ({"cloudType": "CHEAP"}, ["cloudType", "CHEAP"]),
    ({"gpuTypeIds": ["NVIDIA A100"]}, ["gpuTypeIds/0", "NVIDIA A100"]),
    ({"gpuCount": "2"}, ["gpuCount", "'2' is not of type 'integer'"]),
    ({"gpuCount": 0}, ["gpuCount", "minimum"]),
    ({"env": {"SEED": 1}}, ["env/SEED", "not of type 'string'"]),
    ({"ports": "22/tcp"}, ["ports", "not of type 'array'"]),
])
def test_a_body_against_the_spec_is_refused_naming_the_field(runpod, change, words):
    answer = api(runpod, "POST", "/pods", json={**BODY, **change})
    assert answer.status_code == 400
    assert answer.json()["status"] == 400
    for word in words:
        assert word in answer.json()["error"]
    assert runpod.pods == {}


def test_bodies_that_are_not_json_or_not_a_pod_are_refused(runpod):
    not_json = requests.post(f"{runpod.url}/pods", data="{not json", timeout=10,
                             headers={"Authorization": f"Bearer {USER_KEY}",
                                      "Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    form = requests.post(f"{runpod.url}/pods", data={"name": "x"}, timeout=10,
                         headers={"Authorization": f"Bearer {USER_KEY}"})
    assert form.status_code == 400 and "Content-Type" in form.json()["error"]
    assert api(runpod, "POST", "/pods").status_code == 400
    no_image = api(runpod, "POST", "/pods", json={"gpuTypeIds": ["NVIDIA L40S"]})
    assert no_image.json() == {"error": "imageName or templateId is required", "status": 400}


def test_fail_next_answers_with_runpods_errors_and_changes_nothing(runpod):
    runpod.fail_next("POST", "/pods", 400, NO_INSTANCES)
    runpod.fail_next("GET", r"/pods/\w+", 429, TOO_MANY_REQUESTS, times=2)
    refused = api(runpod, "POST", "/pods", json=BODY)
    assert (refused.status_code, refused.json()) == (400, {"error": NO_INSTANCES, "status": 400})
    assert runpod.pods == {}
    pod = create(runpod)
    for _ in range(2):
        assert api(runpod, "GET", f"/pods/{pod['id']}").status_code == 429
    assert api(runpod, "GET", f"/pods/{pod['id']}").status_code == 200
    assert [r.path for r in runpod.requests].count("/pods") == 2


def test_gpus_out_of_stock_are_skipped_then_refused(runpod):
    runpod.unavailable = {"NVIDIA H100 80GB HBM3"}
    pod = create(runpod, gpuTypeIds=["NVIDIA H100 80GB HBM3", "NVIDIA L40S"], gpuCount=1)
    assert (pod["gpu"]["id"], pod["costPerHr"]) == ("NVIDIA L40S", 0.86)
    refused = api(runpod, "POST", "/pods", json={**BODY, "gpuTypeIds": ["NVIDIA H100 80GB HBM3"]})
    assert refused.json() == {"error": NO_INSTANCES, "status": 400}


def test_listing_filters_by_name_and_status_and_refuses_unknown_parameters(runpod):
    a, b = create(runpod, name="a"), create(runpod, name="b")
    api(runpod, "POST", f"/pods/{b['id']}/stop")

    def names(query):
        return [p["name"] for p in api(runpod, "GET", "/pods", params=query).json()]

    assert names({"name": "a"}) == ["a"]
    assert names({"name": "c"}) == []
    assert names({"desiredStatus": "EXITED"}) == ["b"]
    assert names({"gpuTypeId": ["NVIDIA L40S", "NVIDIA A100-SXM4-80GB"]}) == ["a", "b"]
    with_machine = api(runpod, "GET", "/pods", params={"includeMachine": "true", "name": "a"})
    assert with_machine.json()[0]["machine"]["dataCenterId"] == "EU-RO-1"
    for query, words in [({"podName": "a"}, ["podName"]),
                         ({"desiredStatus": "STOPPED"}, ["STOPPED"]),
                         ({"includeMachine": "yes"}, ["boolean"]),
                         ({"name": ["a", "b"]}, ["2 times"])]:
        refused = api(runpod, "GET", "/pods", params=query)
        assert refused.status_code == 400, query
        assert all(word in refused.json()["error"] for word in words), refused.json()
    assert api(runpod, "GET", f"/pods/{a['id']}", params={"name": "a"}).status_code == 400


def test_a_pod_without_a_volume_loses_its_workspace_when_stopped(runpod):
    pod = create(runpod, volumeInGb=0)
    _, port, _ = wait_for_address(runpod, pod["id"])
    ssh(runpod, port, f"touch {runpod.workspace}/x")
    api(runpod, "POST", f"/pods/{pod['id']}/stop")
    assert not (runpod.workspace / "x").exists()


def test_paths_and_methods_outside_the_model_say_so(runpod):
    pod = create(runpod)
    assert api(runpod, "POST", f"/pods/{pod['id']}/restart").status_code == 501
    assert api(runpod, "PUT", f"/pods/{pod['id']}").status_code == 405
    assert api(runpod, "GET", "/pod").status_code == 404
    assert requests.get(runpod.url.removesuffix("/v1") + "/pods", timeout=10).status_code == 404
    assert api(runpod, "GET", "/openapi.json", key=None).json()["openapi"] == "3.0.3"
    assert api(runpod, "GET", f"/pods/{'x' * 14}").status_code == 404


def test_an_answer_against_the_spec_is_a_500_and_a_violation(runpod, monkeypatch):
    pod = create(runpod)
    original = runpod._pod_json
    monkeypatch.setattr(runpod, "_pod_json", lambda p, q: {**original(p, q), "status": "RUNNING",
                                                          "costPerHr": "1.89"})
    answer = api(runpod, "GET", f"/pods/{pod['id']}")
    assert answer.status_code == 500
    assert "status" in answer.json()["error"] and "costPerHr" in answer.json()["error"]
    assert len(runpod.violations) == 1
    with pytest.raises(AssertionError, match="broke its own spec"):
        runpod.assert_no_violations()
    runpod.violations.clear()


def test_the_spec_is_read_as_openapi_3_0():
    spec = load_spec()
    pod = json_schema({"$ref": "#/components/schemas/Pod"}, spec, strict=True)
    assert pod["properties"]["publicIp"]["type"] == ["string", "null"]
    assert pod["properties"]["portMappings"] == {"type": ["object", "null"],
                                                 "additionalProperties": {"type": "integer"}}
    assert pod["additionalProperties"] is False
    loose = json_schema({"$ref": "#/components/schemas/PodCreateInput"}, spec, strict=False)
    assert "additionalProperties" not in loose


def test_runpod_may_stop_a_pod_on_its_own(tmp_path, runpod):
    with FakeRunPod(tmp_path / "other", USER_KEY, client_key=runpod.client_key,
                    workspace=tmp_path / "volume") as other:
        pod = create(other)
        _, port, _ = wait_for_address(other, pod["id"])
        ssh(other, port, f"touch {tmp_path / 'volume'}/x")
        other.interrupt(pod["id"])
        seen = api(other, "GET", f"/pods/{pod['id']}").json()
        assert seen["desiredStatus"] == "EXITED"
        assert seen["lastStatusChange"].startswith("Interrupted")
        assert (tmp_path / "volume" / "x").exists()
