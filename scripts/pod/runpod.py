"""Renting the pod from the graph: RunPod's REST API (v1), for a pod with ``provider: runpod``.

A training job that must run asks for the pod (``rent``): the one this project rented before
(its id in ``.state/runpod/<name>.json``), else one found by its deterministic name (so a crash
between "created" and "recorded" never rents a second), else a new one. A stopped pod is started.
Then the job waits for the address RunPod reports (``publicIp``, ``portMappings["22"]``) and for
sshd to answer, and connects with the host key pinned to the pod's id (``HostKeyAlias``), learnt
anew only after this project created or started the pod (a new container, new host keys).

When every run on the pod has fetched its adapter (``release``), the pod is stopped, terminated
or kept, as ``on_finish`` says; a failed training stops it. A pod also stops itself when nothing
has trained on it for ``idle_stop_minutes`` (guard.sh, with the pod-scoped key RunPod gives every
pod), so a GPU never idles for long with the laptop asleep or gone.

The API key is read from the environment variable ``api_key_env`` names, sent only in the
Authorization header, and never written anywhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from fileio import read_json_object, write_json

from . import shell
from .messages import PodError, Say
from .run_state import now_iso

RETRIES = 5                 # 429 and 5xx, with backoff
POLL_SECONDS = 5.0          # while a pod boots (SkyPilot polls every 5 s)


class RunPodError(PodError):
    """RunPod said no; the message carries RunPod's own words and what to change."""


def _advice(status: int, said: str, settings: dict) -> str:
    name, env = settings.get("name", "?"), settings["api_key_env"]
    low = said.lower()
    if status == 401 or status == 403:
        return (f"RunPod refused the API key in ${env}: check it (RunPod: Settings -> API Keys; "
                "it needs read and write access)")
    if "no longer any instances" in low or "not available" in low or "no available" in low:
        return (f"no {settings['gpu_type']} is free in RunPod's {settings['cloud_type']} cloud right "
                f"now: try again later, or change pods.{name}.gpu_type or pods.{name}.cloud_type")
    if "fund" in low or "balance" in low or "credit" in low:
        return "your RunPod balance is too low for this pod: add credit (RunPod: Billing)"
    if status == 429:
        return "RunPod's rate limit: wait a minute and run again"
    if status == 404:
        return "RunPod knows no such pod (terminated?)"
    if status == 400:
        return f"RunPod rejected the request: check pods.{name} (gpu_type, template_id or image)"
    return "RunPod's API failed; run again later (status.runpod.io)"


class RunPodAPI:
    """The few calls of RunPod's REST API this project makes, with retries and clear errors."""

    def __init__(self, settings: dict):
        self.settings = settings
        env = settings["api_key_env"]
        key = os.environ.get(env, "").strip()
        if not key:
            raise RunPodError(f"pods.{settings.get('name', '?')}: the RunPod API key is read from "
                              f"${env}, which is not set. Export it in the shell that runs "
                              f"snakemake (RunPod: Settings -> API Keys); nothing was rented")
        self.url = settings["api_url"].rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}", "Accept": "application/json"})

    def call(self, method: str, path: str, what: str, **kwargs):
        delay = 1.0
        for attempt in range(RETRIES + 1):
            try:
                response = self.session.request(method, f"{self.url}{path}", timeout=60, **kwargs)
            except requests.RequestException as exc:
                if attempt == RETRIES:
                    raise RunPodError(f"RunPod's API at {self.url} did not answer while {what} "
                                      f"({type(exc).__name__}); check the network and run again") from None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code not in (429, 500, 502, 503, 504) or attempt == RETRIES:
                    said = _said(response)
                    raise RunPodError(f"RunPod said {response.status_code} while {what}: {said}\n"
                                      f"{_advice(response.status_code, said, self.settings)}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def get(self, pod_id: str) -> dict | None:
        try:
            return self.call("GET", f"/pods/{pod_id}", "looking up the pod")
        except RunPodError as exc:
            if str(exc).startswith("RunPod said 404"):
                return None
            raise

    def find(self, name: str) -> list[dict]:
        pods = self.call("GET", "/pods", "looking for the pod by name", params={"name": name}) or []
        return [p for p in pods if p.get("name") == name and p.get("desiredStatus") != "TERMINATED"]

    def create(self, body: dict) -> dict:
        return self.call("POST", "/pods", "renting a pod", json=body)

    def start(self, pod_id: str) -> None:
        self.call("POST", f"/pods/{pod_id}/start", "starting the pod")

    def stop(self, pod_id: str) -> None:
        self.call("POST", f"/pods/{pod_id}/stop", "stopping the pod")

    def terminate(self, pod_id: str) -> None:
        self.call("DELETE", f"/pods/{pod_id}", "terminating the pod")


def _said(response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("error") or body.get("message") or body)[:500]
    except ValueError:
        pass
    return response.text.strip()[:500] or response.reason


# ------------------------------------------------------------------------------ the pod's record


def pod_name(settings: dict, workdir: Path) -> str:
    """Deterministic: the same project and pod entry always look for the same RunPod pod."""
    project = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]
    return f"lora-{settings.get('name', 'pod')}-{project}"


def state_path(settings: dict, workdir: Path) -> Path:
    return workdir / ".state" / "runpod" / f"{pod_name(settings, workdir)}.json"


def read_record(settings: dict, workdir: Path) -> dict:
    path = state_path(settings, workdir)
    return read_json_object(path, PodError) if path.exists() else {}


@contextmanager
def locked(settings: dict, workdir: Path):
    """One job at a time decides about the pod (two runs' jobs may start together)."""
    path = state_path(settings, workdir).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def create_body(settings: dict, name: str) -> dict:
    body = {
        "name": name,
        "gpuTypeIds": [settings["gpu_type"]],
        "gpuCount": int(settings["gpu_count"]),
        "cloudType": settings["cloud_type"],
        "containerDiskInGb": int(settings["container_disk_gb"]),
        "volumeInGb": int(settings["volume_gb"]),
        "volumeMountPath": "/workspace",
        "ports": ["22/tcp"],         # only direct TCP SSH carries rsync and scripted commands
        "supportPublicIp": True,
    }
    if settings.get("template_id"):
        body["templateId"] = settings["template_id"]
    else:
        body["imageName"] = settings["image"]
    return body


def _forget_host_key(alias: str, known_hosts: Path) -> None:
    if known_hosts.exists():
        subprocess.run(["ssh-keygen", "-R", alias, "-f", str(known_hosts)], capture_output=True)


def _address(pod: dict) -> tuple[str, int] | None:
    port = (pod.get("portMappings") or {}).get("22")
    return (pod["publicIp"], int(port)) if pod.get("publicIp") and port else None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.settimeout(5)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# ----------------------------------------------------------------------------- rent and release


def rent(settings: dict, run: str, workdir: Path, say: Say) -> dict:
    """The pod for `run`, up and answering: the settings an SSH executor needs to reach it."""
    api = RunPodAPI(settings)
    workdir = Path(workdir)
    name = pod_name(settings, workdir)
    with locked(settings, workdir):
        record = read_record(settings, workdir)
        pod = api.get(record["id"]) if record.get("id") else None
        if pod is not None and pod.get("desiredStatus") == "TERMINATED":
            pod = None
        if pod is None:
            found = api.find(name)
            if found:
                pod = found[0]
                say(f"found pod {name} ({pod['id']}) on RunPod from an earlier call: not renting a second")
        fresh = pod is None or pod.get("desiredStatus") == "EXITED"
        created = pod is None
        if created:
            price = settings.get("gpu_hourly_usd")
            say(f"renting {settings['gpu_count']} x {settings['gpu_type']} ({settings['cloud_type']} "
                f"cloud) on RunPod as pod {name}" + (f", about ${price:.2f}/h a GPU" if price else ""))
            pod = api.create(create_body(settings, name))
        elif fresh:
            say(f"starting pod {name} ({pod['id']}), stopped since its last job")
            api.start(pod["id"])
        record.update(id=pod["id"], name=name, runs={**record.get("runs", {}), run: "training"})
        record.setdefault("created_at", now_iso())
        record.setdefault("events", []).append([now_iso(), "created" if created else
                                                "started" if fresh else "attached"])
        write_json(state_path(settings, workdir), record)
    alias = f"runpod-{pod['id']}"
    known_hosts = workdir / os.path.expanduser(settings["known_hosts"])
    if fresh:
        _forget_host_key(alias, known_hosts)   # a new container has new host keys
    try:
        pod, (host, port) = _wait_until_up(api, pod["id"], settings, say)
    except BaseException:
        # Nothing half-made is left billing: a pod made now goes, one started now stops.
        with locked(settings, workdir):
            (api.terminate if created else api.stop)(pod["id"])
            if created:
                state_path(settings, workdir).unlink(missing_ok=True)
        raise
    usd = pod.get("adjustedCostPerHr") or pod.get("costPerHr")
    return {**settings, "host": host, "port": port, "user": settings.get("user") or "root",
            "host_key_alias": alias, "pod_id": pod["id"],
            "pod_usd_per_hour": float(usd) if usd is not None else None}


def _wait_until_up(api: RunPodAPI, pod_id: str, settings: dict, say: Say) -> tuple[dict, tuple]:
    deadline = time.monotonic() + 60 * float(settings["boot_minutes"])
    said = False
    while time.monotonic() < deadline:
        pod = api.get(pod_id)
        if pod is None:
            raise RunPodError(f"pod {pod_id} vanished on RunPod while booting; run again")
        address = _address(pod)
        if address and _answers(*address):
            say(f"pod {pod_id} is up: ssh root@{address[0]} -p {address[1]}")
            return pod, address
        if not said:
            say(f"waiting for pod {pod_id} to boot and sshd to answer (up to "
                f"{settings['boot_minutes']:g} min)")
            said = True
        time.sleep(min(POLL_SECONDS, float(settings["poll_seconds"])))
    raise RunPodError(f"pod {pod_id} did not answer on SSH within {settings['boot_minutes']:g} min "
                      f"(pods.{settings.get('name')}.boot_minutes); it was given back so that it does "
                      "not bill. Run again, or choose another gpu_type or cloud_type; a custom image "
                      "must run sshd and expose 22/tcp")


def start_guard(ex, settings: dict) -> None:
    """The pod's guard (guard.sh), from the first contact on: the pod stops itself once nothing
    has trained on it for idle_stop_minutes, whatever happens to the laptop or this job."""
    ex.run("guard_start.sh", settings["remote_dir"], int(60 * float(settings["idle_stop_minutes"])),
           settings["api_url"], shell.script("guard.sh"), timeout=120)


def release(settings: dict, run: str, workdir: Path, say: Say, failed: bool = False) -> None:
    """This run is done with the pod. When no run still needs it, apply on_finish (a failed
    training stops it, unless on_finish is keep)."""
    workdir = Path(workdir)
    with locked(settings, workdir):
        record = read_record(settings, workdir)
        if not record.get("id"):
            return
        record.setdefault("runs", {})[run] = "failed" if failed else "fetched"
        waiting = sorted(r for r, state in record["runs"].items() if state == "training")
        action = settings["on_finish"]
        if failed and action == "terminate":
            action = "stop"  # keep the checkpoints and logs of a failed run to look at
        if waiting:
            say(f"pod {record['name']} keeps running: {', '.join(waiting)} still training on it")
            write_json(state_path(settings, workdir), record)
            return
        api = RunPodAPI(settings)
        if action == "keep":
            say(f"pod {record['name']} ({record['id']}) is kept running, as on_finish: keep says; "
                "it bills until you stop it (RunPod's console, or on_finish: stop)")
        elif action == "stop":
            api.stop(record["id"])
            say(f"pod {record['name']} stopped: no GPU bills; its volume (/workspace, with every "
                "checkpoint) is kept at RunPod's storage price")
        else:
            api.terminate(record["id"])
            say(f"pod {record['name']} terminated: nothing on it bills or remains")
        record["events"].append([now_iso(), action])
        if action == "terminate":
            state_path(settings, workdir).unlink(missing_ok=True)
        else:
            write_json(state_path(settings, workdir), record)
