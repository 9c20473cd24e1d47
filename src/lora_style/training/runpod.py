"""Renting the pod from the graph: RunPod's REST API v2, for a pod with ``provider: runpod``.

A training job that must run asks for the pod (``rent``): the one this project rented before
(its id in ``.state/runpod/<name>.json``), else one found by its deterministic name (so neither a
crash between "created" and "recorded" nor a create whose answer was lost ever rents a second),
else a new one, but only once RunPod has the SSH key registered (a v2 pod gets SSH only from the
account's keys) and the GPU type is in stock. A stopped pod is started; one that cannot start
again (its host's GPUs were rented meanwhile) is replaced on its network volume, if it has one.
Then the job waits for the address RunPod reports (``ssh.direct``: never the proxy, which carries
no rsync) and for sshd to answer, and connects with the host key pinned to the pod's id
(``HostKeyAlias``), learnt anew only after this project created or started the pod.

When every run on the pod has fetched its adapter (``release``), the pod is stopped, terminated
or kept, as ``on_finish`` says; a failed training stops it. A pod also stops itself when nothing
has trained on it for ``idle_stop_minutes`` (guard.sh, with the pod-scoped key RunPod gives every
pod), so a GPU never idles for long with the laptop asleep or gone. What RunPod billed for the
pod is read back afterwards (``bill``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from lora_style.fileio import read_json_object, write_json

from . import runpod_account, runpod_catalog, shell
from .messages import PodError, Say
from .run_state import now_iso
from .runpod_api import RunPodAPI, RunPodError
from .settings import PodSettings

POLL_SECONDS = 5.0  # while a pod boots (SkyPilot polls every 5 s)
MOUNT_PATH = "/workspace"  # where RunPod's images and the LLaMA-Factory template keep data
UP = ("PROVISIONING", "STARTING", "RUNNING")


class PodStopped(PodError):
    """RunPod reports the rented pod stopped (or failed, or gone) while a job needed it."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------ the pod's record


def pod_name(settings: PodSettings, workdir: Path) -> str:
    """Deterministic: the same project and pod entry always look for the same RunPod pod."""
    project = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]
    return f"lora-{settings.name or 'pod'}-{project}"


def state_path(settings: PodSettings, workdir: Path) -> Path:
    return workdir / ".state" / "runpod" / f"{pod_name(settings, workdir)}.json"


def read_record(settings: PodSettings, workdir: Path) -> dict:
    path = state_path(settings, workdir)
    return read_json_object(path, PodError) if path.exists() else {}


@contextmanager
def locked(settings: PodSettings, workdir: Path):
    """One job at a time decides about the pod (two runs' jobs may start together)."""
    path = state_path(settings, workdir).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def create_body(settings: PodSettings, name: str, data_center: str | None = None) -> dict:
    """v2's CreatePodRequest: SSH from the account's keys on the pod's published 22/tcp."""
    body = {
        "name": name,
        "gpu": {"id": settings.gpu_type, "count": int(settings.gpu_count)},
        "cloud": settings.cloud_type,
        "disk": int(settings.container_disk_gb),
        "ports": ["22/tcp"],  # ssh.direct: only direct TCP SSH carries rsync
        "startSsh": True,
    }
    if settings.network_volume_id:
        body["mounts"] = {"network": [{"volumeId": settings.network_volume_id, "path": MOUNT_PATH}]}
        body["dataCenterIds"] = [data_center] if data_center else []
    else:
        body["mounts"] = {"persistent": {"size": int(settings.volume_gb), "path": MOUNT_PATH}}
    if settings.template_id:
        body["templateId"] = settings.template_id
    else:
        body["image"] = settings.image
    if not body.get("dataCenterIds"):
        body.pop("dataCenterIds", None)
    return body


def _forget_host_key(alias: str, known_hosts: Path) -> None:
    if known_hosts.exists():
        subprocess.run(["ssh-keygen", "-R", alias, "-f", str(known_hosts)], capture_output=True)


def _address(pod: dict) -> tuple[str, int, str] | None:
    direct = (pod.get("ssh") or {}).get("direct")
    if pod.get("status") != "RUNNING" or not direct:
        return None
    return direct["host"], int(direct["port"]), direct.get("username") or "root"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.settimeout(5)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# ----------------------------------------------------------------------------- create, adopt


def _create_or_adopt(api: RunPodAPI, body: dict, say: Say) -> dict:
    """POST /pods, never blindly again: after a failed or unanswered create the pods are listed
    and the one with our name adopted; a create is repeated only when none exists."""
    deadline = time.monotonic() + api.patience
    delay = 1.0
    while True:
        try:
            return api.create(body)
        except RunPodError as exc:
            if exc.status is not None and exc.status < 500 and exc.status != 429:
                raise  # refused: nothing was made
            if time.monotonic() > deadline:
                raise
            wait = getattr(exc, "retry_after", None) or delay
            say(
                f"RunPod's answer to the create was {'lost' if exc.status is None else exc.status}"
                f"; looking for pod {body['name']} in {wait:.0f} s before renting again"
            )
            time.sleep(wait)
            delay = min(delay * 2, 30.0)
        found = api.find(body["name"])
        if found:
            say(f"pod {body['name']} ({found[0]['id']}) was made: adopted, not rented twice")
            return found[0]


def _replace(api: RunPodAPI, settings: PodSettings, pod: dict, name: str, say: Say) -> dict:
    volume = settings.network_volume_id
    say(
        f"pod {name} ({pod['id']}) cannot start on its host again (its GPUs were rented "
        f"meanwhile): terminating it and renting a new one on network volume {volume}, whose "
        "checkpoints it resumes from"
    )
    api.terminate(pod["id"])
    return _create_or_adopt(api, create_body(settings, name, _volume_dc(api, settings)), say)


def _volume_dc(api: RunPodAPI, settings: PodSettings) -> str | None:
    volume = settings.network_volume_id
    if not volume:
        return None
    try:
        return api.network_volume(volume)["dataCenter"]
    except RunPodError as exc:
        if exc.status == 404:
            raise PodError(
                f"pods.{settings.name}.network_volume_id {volume}: RunPod knows "
                "no such network volume in this account (RunPod: Storage); nothing "
                "was rented"
            ) from None
        raise


def _start(api: RunPodAPI, settings: PodSettings, pod: dict, name: str, say: Say) -> dict:
    """Start a stopped pod; one whose host has no free GPU is replaced on its network volume."""
    say(f"starting pod {name} ({pod['id']}), stopped since its last job")
    try:
        return api.action(pod["id"], "start") or pod
    except RunPodError as exc:
        if exc.status != 400:  # RunPod's refusal to place it; an outage or a bad key is no reason
            raise  # to give the pod up
        if settings.network_volume_id:
            return _replace(api, settings, pod, name, say)
        raise PodError(
            f"pod {name} ({pod['id']}) is stopped and RunPod will not start it again: "
            f"{exc.detail or exc}. Its checkpoints stay on that host's volume (the pod "
            "is kept, stopped). Run again later, when the host has a free GPU; a "
            f"network volume (pods.{settings.name}.network_volume_id) would "
            "have let the graph resume on a new pod right away"
        ) from None


# ----------------------------------------------------------------------------- rent and release


def rent(settings: PodSettings, run: str, workdir: Path, say: Say, need: dict | None = None) -> PodSettings:
    """The pod for `run`, up and answering: the settings an SSH executor needs to reach it.
    `need` (the plan's estimate) prices the alternatives when the GPU type is out of stock."""
    api = RunPodAPI(settings, say)
    workdir = Path(workdir)
    name = pod_name(settings, workdir)
    with locked(settings, workdir):
        record = read_record(settings, workdir)
        pod = api.get(record["id"]) if record.get("id") else None
        if pod is not None and pod.get("status") == "TERMINATED":
            pod = None
        if pod is None:
            found = api.find(name)
            if found:
                pod = found[0]
                say(f"found pod {name} ({pod['id']}) on RunPod from an earlier call: not renting a second")
        created = pod is None
        fresh = created or pod["status"] in ("EXITED", "ERROR")
        if created:
            runpod_account.ensure_ssh_key(api, settings, say)
            runpod_catalog.check_stock(api, settings, need, workdir, say)
            body = create_body(settings, name, _volume_dc(api, settings))
            say(
                f"renting {settings.gpu_count} x {settings.gpu_type} ({settings.cloud_type} "
                f"cloud) on RunPod as pod {name}"
            )
            pod = _create_or_adopt(api, body, say)
        elif fresh:
            before = pod["id"]
            pod = _start(api, settings, pod, name, say)
            created = pod["id"] != before  # replaced on its network volume
        record.update(id=pod["id"], name=name, runs={**record.get("runs", {}), run: "training"})
        record.setdefault("created_at", now_iso())
        record.setdefault("pods", [])
        if pod["id"] not in record["pods"]:
            record["pods"].append(pod["id"])
        record.setdefault("events", []).append(
            [now_iso(), "created" if created else "started" if fresh else "attached"]
        )
        write_json(state_path(settings, workdir), record)
    alias = f"runpod-{pod['id']}"
    known_hosts = workdir / os.path.expanduser(settings.known_hosts)
    if fresh:
        _forget_host_key(alias, known_hosts)  # a new container has new host keys
    try:
        pod, (host, port, user) = _wait_until_up(api, pod["id"], settings, say)
    except BaseException:
        with locked(settings, workdir):
            _give_back(api, settings, workdir, pod["id"], created, say)
        raise
    return replace(
        settings,
        host=host,
        port=port,
        user=settings.user or user,
        host_key_alias=alias,
        pod_id=pod["id"],
        pod_usd_per_hour=float(pod["cost"]) if pod.get("cost") else None,
    )


def _give_back(
    api: RunPodAPI, settings: PodSettings, workdir: Path, pod_id: str, created: bool, say: Say
) -> None:
    """Nothing half-made is left billing: a pod made by this call goes; one started by it stops
    (keeping its volume's checkpoints). A pod in ERROR cannot be stopped (RunPod allows only
    start or terminate there): without a network volume it is left as it is, with its volume."""
    if created:
        api.terminate(pod_id)
        state_path(settings, workdir).unlink(missing_ok=True)
        return
    pod = api.get(pod_id)
    if pod is None or pod["status"] in ("EXITED", "TERMINATED"):
        return
    if "stop" in pod.get("actions", []):
        api.action(pod_id, "stop")
    elif settings.network_volume_id:
        api.terminate(pod_id)  # its checkpoints are on the network volume
    else:
        say(
            f"pod {pod_id} is in {pod['status']}, which RunPod lets only start or terminate: it "
            "is kept, with its volume's checkpoints; terminate it in RunPod's console once you "
            "have what you need"
        )


def _wait_until_up(api: RunPodAPI, pod_id: str, settings: PodSettings, say: Say) -> tuple[dict, tuple]:
    deadline = time.monotonic() + 60 * float(settings.boot_minutes)
    said = False
    while time.monotonic() < deadline:
        pod = api.get(pod_id)
        if pod is None or pod["status"] == "TERMINATED":
            raise PodError(f"pod {pod_id} vanished on RunPod while booting; run again")
        if pod["status"] == "ERROR":
            raise PodError(
                f"RunPod reports pod {pod_id} in ERROR while booting (its container is "
                "in an unrecoverable error state); it was given back so that it does "
                "not bill. Run again, or choose another image or template_id"
            )
        if pod["status"] == "EXITED":
            raise PodError(f"pod {pod_id} stopped while booting (RunPod: EXITED); run again")
        address = _address(pod)
        if address and _answers(address[0], address[1]):
            say(f"pod {pod_id} is up: ssh {address[2]}@{address[0]} -p {address[1]}")
            return pod, address
        if not said:
            say(f"waiting for pod {pod_id} to boot and sshd to answer (up to {settings.boot_minutes:g} min)")
            said = True
        time.sleep(min(POLL_SECONDS, float(settings.poll_seconds)))
    raise PodError(
        f"pod {pod_id} did not answer on SSH within {settings.boot_minutes:g} min "
        f"(pods.{settings.name}.boot_minutes); it was given back so that it does "
        "not bill. Run again, or choose another gpu_type or cloud_type; a custom image "
        "must run sshd from PUBLIC_KEY and expose 22/tcp"
    )


def pod_status(settings: PodSettings, workdir: Path) -> dict | None:
    """What RunPod reports of the rented pod now (one quick look, no retries), or None."""
    record = read_record(settings, Path(workdir))
    if not record.get("id"):
        return None
    try:
        api = RunPodAPI(replace(settings, api_retry_minutes=0.2))
        return api.get(record["id"]) or {"id": record["id"], "status": "TERMINATED"}
    except PodError:
        return None


def check_running(settings: PodSettings, workdir: Path) -> None:
    """SSH failed: ask RunPod before retrying it. A pod RunPod stopped (maintenance, a balance at
    $0, the console, a guard that misfired) raises PodStopped, which the caller recovers from."""
    pod = pod_status(settings, workdir)
    if pod is not None and pod["status"] not in UP:
        raise PodStopped(f"RunPod reports pod {pod['id']} {pod['status']}", pod["status"])


def start_guard(ex, settings: PodSettings, say: Say) -> None:
    """The pod's guard (guard.sh), from the first contact on: the pod stops itself once nothing
    has trained on it for idle_stop_minutes, whatever happens to the laptop or this job."""
    facts = ex.run(
        "guard_start.sh",
        settings.remote_dir,
        int(60 * float(settings.idle_stop_minutes)),
        settings.api_url,
        shell.script("guard.sh"),
        timeout=120,
    ).facts
    for line in facts.get("guard_failed", []):
        say(
            f"WARNING: this pod's guard could not stop it while it was idle: {line}. The pod "
            "billed meanwhile; check RunPod's console, and that the image has curl or runpodctl"
        )


def release(settings: PodSettings, run: str, workdir: Path, say: Say, failed: bool = False) -> dict | None:
    """This run is done with the pod. When no run still needs it, apply on_finish (a failed
    training stops it, unless on_finish is keep). Returns the pod's record when it was given
    back (so its bill can be read), else None."""
    workdir = Path(workdir)
    with locked(settings, workdir):
        record = read_record(settings, workdir)
        if not record.get("id"):
            return None
        record.setdefault("runs", {})[run] = "failed" if failed else "fetched"
        waiting = sorted(r for r, state in record["runs"].items() if state == "training")
        action = settings.on_finish
        if failed and action == "terminate":
            action = "stop"  # keep the checkpoints and logs of a failed run to look at
        if waiting:
            say(f"pod {record['name']} keeps running: {', '.join(waiting)} still training on it")
            write_json(state_path(settings, workdir), record)
            return None
        api = RunPodAPI(settings, say)
        if action == "keep":
            say(
                f"pod {record['name']} ({record['id']}) is kept running, as on_finish: keep says; "
                "it bills until you stop it (RunPod's console, or on_finish: stop)"
            )
        elif action == "stop":
            api.action(record["id"], "stop")
            say(
                f"pod {record['name']} stopped: no GPU bills; its volume ({MOUNT_PATH}, with every "
                "checkpoint) is kept at RunPod's storage price"
            )
        else:
            api.terminate(record["id"])
            say(f"pod {record['name']} terminated: nothing on it bills or remains")
        record["events"].append([now_iso(), action])
        record["released_at"] = now_iso()
        write_json(state_path(settings, workdir), record)
        return record
