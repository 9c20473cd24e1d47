"""The RunPod account's side of a rented pod: the SSH key it must hold before anything is
rented, and what it billed for the pod afterwards.

A v2 pod gets SSH only when it is created with ``startSsh`` *and* the account has registered
keys (``GET``/``PUT /v2/account/ssh-keys``): with none, it boots, bills and never answers. So the
public half of ``identity_file`` is checked before a pod is created, and registered only when
``register_ssh_key`` says so, as the union of the account's keys and ours (``PUT`` replaces the
whole set: the user's other keys are never dropped).

``bill`` reads ``GET /v2/billing/pods`` for each pod the project rented, from its creation on:
RunPod's own GPU, CPU, disk and total, beside the training-only ``gpu_time``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .messages import PodError, Say
from .run_state import now_iso
from .runpod_api import RunPodAPI
from .settings import PodSettings


def public_key(settings: PodSettings) -> str | None:
    """The public half of identity_file (`type base64`), from its .pub or from the key."""
    identity = settings.identity_file
    if not identity:
        return None
    path = Path(os.path.expanduser(identity))
    pub = Path(f"{path}.pub")
    if pub.is_file():
        text = pub.read_text(encoding="utf-8", errors="replace")
    else:
        done = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise PodError(
                f"pods.{settings.name}.identity_file {identity}: no {pub.name} "
                "beside it and its public half cannot be read from it (a passphrase?); "
                f"write it with `ssh-keygen -y -f {identity} > {pub}`; nothing was rented"
            )
        text = done.stdout
    fields = text.split()
    return " ".join(fields[:2]) if len(fields) >= 2 else None


def ensure_ssh_key(api: RunPodAPI, settings: PodSettings, say: Say) -> None:
    """A v2 pod gets SSH only from the account's registered keys (startSsh): with ours missing it
    would boot, bill and never answer. Registered here only with register_ssh_key, as the union
    of what is there and ours (PUT replaces the whole set)."""
    name = settings.name or "?"
    keys = api.ssh_keys()
    ours = public_key(settings)
    if ours is None:
        if keys:
            return  # ssh-agent or ~/.ssh/config: one of the account's keys, we cannot tell which
        raise PodError(
            f"pods.{name}: your RunPod account has no SSH public key registered, so a "
            "pod would boot, bill and never let you in. Add yours (RunPod: Settings -> "
            "SSH Public Keys), or set identity_file and register_ssh_key: true; "
            "nothing was rented"
        )
    if any(" ".join(key.split()[:2]) == ours for key in keys):
        return
    if settings.register_ssh_key:
        api.set_ssh_keys([*keys, f"{ours} lora-pipeline"])
        say(
            f"registered {settings.identity_file}.pub with RunPod (kept the account's other "
            f"{len(keys)} key(s))"
        )
        return
    raise PodError(
        f"pods.{name}: the public half of {settings.identity_file} is not among "
        f"your RunPod account's {len(keys)} registered SSH key(s), so the pod would "
        "boot, bill and refuse you. Add it (RunPod: Settings -> SSH Public Keys: "
        f"paste {settings.identity_file}.pub), or set pods.{name}.register_ssh_key: "
        "true to let the graph add it; nothing was rented"
    )


def bill(settings: PodSettings, record: dict, say: Say | None = None) -> dict:
    """What RunPod billed for the project's pod(s) from its creation on: GPU, CPU, disk and
    total in USD, summed over RunPod's hourly buckets, with when it was read. Billing lags by
    minutes to hours: a later `python -m lora_style.training.remote_train bill` reads it again."""
    api = RunPodAPI(settings, say)
    totals = {"gpu_usd": 0.0, "cpu_usd": 0.0, "disk_usd": 0.0, "total_usd": 0.0}
    for pod_id in record.get("pods") or [record["id"]]:
        answer = api.pod_billing(pod_id, _hour(record["created_at"]))
        got = (answer.get("metadata") or {}).get("totals") or {}
        for ours, theirs in (
            ("gpu_usd", "gpuAmount"),
            ("cpu_usd", "cpuAmount"),
            ("disk_usd", "diskAmount"),
            ("total_usd", "totalAmount"),
        ):
            totals[ours] += float(got.get(theirs) or 0)
    return {
        **{k: round(v, 4) for k, v in totals.items()},
        "pods": record.get("pods") or [record["id"]],
        "from": record["created_at"],
        "read_at": now_iso(),
        "note": "RunPod's billing can lag by up to a few hours; `python -m "
        "lora_style.training.remote_train bill ...` (docs/runpod.md) reads it again",
    }


def _hour(iso: str) -> str:
    """An RFC 3339 time snapped down to its hour (the bucket boundary RunPod aligns to)."""
    return iso[:13] + ":00:00Z"
