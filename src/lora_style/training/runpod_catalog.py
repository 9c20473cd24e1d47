"""RunPod's GPU catalog (``GET /v2/catalog/gpus``): stock before renting, list prices for the plan.

Before a pod is created, the catalog (with ``include=AVAILABILITY&product=POD``) says whether
``gpu_type`` is in stock in ``cloud_type``; when it is not, nothing is rented and the user is
shown the GPU types in stock with enough memory for the run (preflight's estimate), their list
price and the run's estimated cost on each. Every read is kept in ``.state/runpod/catalog.json``,
which the plan's cost line (a dry run, which opens no connection) prices from, saying how old it
is; ``python -m lora_style.training.remote_train prices`` refreshes it.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from lora_style.fileio import read_json_object, write_json

from .cost import short_gpu, steps_per_hour
from .messages import PodError, Say
from .run_state import now_iso
from .settings import PodSettings


def catalog_path(workdir: Path) -> Path:
    return Path(workdir) / ".state" / "runpod" / "catalog.json"


def save_catalog(workdir: Path, cloud: str, count: int, gpus: list[dict]) -> Path:
    path = catalog_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"read_at": now_iso(), "cloud": cloud, "count": count, "gpus": gpus})
    return path


def list_price(workdir: Path, gpu_type: str | None, cloud: str) -> tuple[float, str] | None:
    """RunPod's list price of one `gpu_type` GPU per hour in `cloud`, from the last catalog read,
    with how long ago that was; None without a catalog or that GPU in it."""
    path = catalog_path(workdir)
    if not gpu_type or not path.exists():
        return None
    try:
        saved = read_json_object(path, PodError)
    except PodError:
        return None
    for gpu in saved.get("gpus") or []:
        if gpu.get("id") == gpu_type:
            price = (gpu.get("price") or {}).get(cloud.lower())
            if price:
                return float(price), age(saved.get("read_at", ""))
    return None


def age(iso: str) -> str:
    try:
        then = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return "at an unknown time"
    minutes = (datetime.datetime.now(datetime.UTC) - then).total_seconds() / 60
    if minutes < 90:
        return f"{max(minutes, 0):.0f} min ago"
    if minutes < 48 * 60:
        return f"{minutes / 60:.0f} h ago"
    return f"{minutes / 1440:.0f} days ago"


def _in_stock(gpu: dict) -> bool:
    return gpu.get("availability", "NONE") != "NONE"


def alternatives(gpus: list[dict], cloud: str, count: int, need: dict | None) -> list[str]:
    """Lines for the GPU types in stock with enough memory for the run, cheapest first."""
    need = need or {}
    memory = need.get("memory_gb")
    lines = []
    fitting = [
        g
        for g in gpus
        if _in_stock(g)
        and (not memory or g.get("memory", 0) >= memory)
        and (g.get("maxCount") or {}).get(cloud.lower(), count) >= count
    ]
    for gpu in sorted(fitting, key=lambda g: (g.get("price") or {}).get(cloud.lower()) or 1e9):
        price = (gpu.get("price") or {}).get(cloud.lower())
        text = f"  {gpu['id']} ({gpu.get('memory', '?')} GB, {gpu['availability'].lower()} stock)" + (
            f": ${price:.2f}/h a GPU" if price else ""
        )
        rate = steps_per_hour(need["profile"], gpu["id"]) if need.get("profile") else None
        if price and rate and need.get("steps"):
            hours = need["steps"] / rate
            text += f", this run ~{hours:.1f} h = ~${hours * price * count:.2f}"
        elif need.get("steps"):
            text += ", no measured rate for this profile on it (config/rates.yaml)"
        lines.append(text)
    return lines


def check_stock(api, settings: PodSettings, need: dict | None, workdir: Path, say: Say) -> None:
    """Raise before renting when gpu_type is out of stock in cloud_type, naming what is in stock."""
    cloud, count, wanted = settings.cloud_type, int(settings.gpu_count), settings.gpu_type
    gpus = read_catalog(api, settings, workdir)
    entry = next((g for g in gpus if g.get("id") == wanted), None)
    if entry is not None and _in_stock(entry):
        price = (entry.get("price") or {}).get(cloud.lower())
        say(
            f"{short_gpu(wanted)} is in stock in RunPod's {cloud} cloud ({entry['availability'].lower()})"
            + (f", list price ${price:.2f}/h a GPU" if price else "")
        )
        return
    name = settings.name or "?"
    why = (
        f"RunPod's catalog has no GPU type {wanted!r}"
        if entry is None
        else f"no {wanted} is in stock in RunPod's {cloud} cloud now"
    )
    memory = (need or {}).get("memory_gb")
    lines = alternatives(gpus, cloud, count, need)
    head = (
        f"In stock now with at least {memory:.0f} GB a GPU (preflight's estimate for this run):"
        if memory
        else "In stock now:"
    )
    raise PodError(
        "\n".join(
            [
                f"{why}; nothing was rented.",
                *([head, *lines] if lines else [f"{head} none"]),
                f"Set pods.{name}.gpu_type to one of them (RunPod's id, as above), try pods.{name}."
                "cloud_type: COMMUNITY, or run again later.",
            ]
        )
    )


def read_catalog(api, settings: PodSettings, workdir: Path) -> list[dict]:
    """The catalog for the pod's cloud and GPU count, read now and kept for the plan's cost line
    (`python -m lora_style.training.remote_train prices`, and every check before renting)."""
    cloud, count = settings.cloud_type, int(settings.gpu_count)
    gpus = api.gpu_catalog(cloud, count)
    save_catalog(workdir, cloud, count, gpus)
    return gpus
