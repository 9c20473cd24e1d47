"""What a run's training costs: the plan's estimate, and the GPU time it used.

The estimate is the steps the run will take (``max_steps``, else epochs x examples / effective
batch: estimate.planned_steps) at a measured rate (config/rates.yaml, steps per hour by profile
and GPU type), times the pod's price: ``gpu_hourly_usd`` is the price of one GPU-hour, and every
GPU the training uses (``gpu_count``) is paid for. The cost after is the
wall time of every training attempt (attempts.log on the pod) times the same price, or the rented
pod's own price once it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import yaml

from lora_style.paths import CONFIG

from .estimate import planned_steps
from .processes import world_size
from .settings import PodSettings

RATES = CONFIG / "rates.yaml"


@cache
def rates() -> dict:
    return yaml.safe_load(RATES.read_text(encoding="utf-8")) or {}


def steps_per_hour(profile: str, gpu_type: str | None) -> float | None:
    """The measured rate of a profile on a GPU type (or its `default`), else None."""
    table = rates().get(profile) or {}
    value = table.get(gpu_type, table.get("default"))
    return float(value) if value is not None else None


def short_gpu(gpu_type: str | None) -> str:
    return (gpu_type or "GPU").removeprefix("NVIDIA ").strip()


def gpus_paid(pod: PodSettings) -> int:
    """The GPUs a training holds: a Slurm job's `gpus` on each of its `nodes`, else the pod's
    `gpu_count` (at least one: a CPU job is priced as one unit per node)."""
    if pod.executor == "slurm":
        return max(1, int(pod.gpus or 0)) * int(pod.nodes or 1)
    return int(pod.gpu_count or 1)


def usd_per_hour(pod: PodSettings) -> float | None:
    """The pod's price per hour, all its GPUs: the rented pod's own, else gpu_hourly_usd x count."""
    if pod.pod_usd_per_hour is not None:
        return float(pod.pod_usd_per_hour)
    if pod.gpu_hourly_usd is None:
        return None
    return float(pod.gpu_hourly_usd) * gpus_paid(pod)


@dataclass
class Estimate:
    run: str
    steps: int
    rate: float | None  # steps per hour
    gpus: int
    gpu_type: str | None
    gpu_hourly_usd: float | None
    where: str
    profile: str | None = None
    price_source: str | None = None  # where a price other than gpu_hourly_usd came from

    @property
    def hours(self) -> float | None:
        return self.steps / self.rate if self.rate else None

    @property
    def gpu_hours(self) -> float | None:
        return self.hours * self.gpus if self.hours is not None else None

    @property
    def usd(self) -> float | None:
        if self.gpu_hours is None or self.gpu_hourly_usd is None:
            return None
        return self.gpu_hours * self.gpu_hourly_usd

    def line(self) -> str:
        """`lovecraft: 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h = ~$13.50`"""
        on = f"{self.gpus} x {short_gpu(self.gpu_type)}" if self.gpu_type else self.where
        text = f"{self.run}: {self.steps} steps"
        if self.gpu_hours is None:
            return (
                f"{text} on {on}; no measured rate for this profile on this GPU, so no time or "
                "cost estimate (add one to config/rates.yaml)"
            )
        if self.gpus > 1 and self.gpu_type:
            # Several GPUs: the wall time too, and a price that reads as per GPU.
            text += f", ~{self.gpu_hours:.1f} GPU-hours ({self.hours:.1f} h on {on})"
            per = " per GPU-hour"
        else:
            text += f", ~{self.gpu_hours:.1f} {'GPU-hours' if self.gpu_type else 'hours'} on {on}"
            per = "/h"
        if self.usd is None:
            return f"{text}; no price (set gpu_hourly_usd on the pod for a cost)"
        text += f" at ${self.gpu_hourly_usd:.2f}{per} = ~${self.usd:.2f}"
        return f"{text} ({self.price_source})" if self.price_source else text

    def as_dict(self) -> dict:
        return {**asdict(self), "gpu_hours": self.gpu_hours, "usd": self.usd}


def estimate(
    run: str,
    args: dict,
    profile: str,
    pod: PodSettings,
    examples: int | None,
    listed: tuple[float, str] | None = None,
) -> Estimate:
    """The plan's estimate for one run on its pod. examples is only needed without max_steps.
    `listed`: RunPod's list price of one GPU-hour and how old that read is (runpod_catalog), which
    a rented pod's line prefers to gpu_hourly_usd."""
    gpus = gpus_paid(pod)
    # The effective batch spans every training process (CPU processes too: `processes`).
    steps = planned_steps(args, examples or 0, world_size(pod))
    where = "this machine" if pod.executor == "local" else f"pod '{pod.name or '?'}'"
    price, source = pod.gpu_hourly_usd, None
    if listed is not None:
        price, source = listed[0], f"RunPod's list price, read {listed[1]}"
    return Estimate(
        run,
        steps,
        steps_per_hour(profile, pod.gpu_type),
        gpus,
        pod.gpu_type,
        price,
        where,
        profile,
        source,
    )


def used(attempts: list[dict], pod: PodSettings, now: float | None = None) -> dict:
    """GPU time of every training attempt (attempts.log), and its cost at the pod's price."""
    seconds = sum((a.get("end") or now or a["start"]) - a["start"] for a in attempts)
    gpus = gpus_paid(pod)
    gpu_hours = seconds / 3600 * gpus
    price = usd_per_hour(pod)
    return {
        "attempts": len(attempts),
        "wall_seconds": seconds,
        "gpus": gpus,
        "gpu_hours": round(gpu_hours, 4),
        "usd_per_hour": price,
        "usd": round(gpu_hours / gpus * price, 2) if price is not None else None,
    }


def budget_seconds(pod: PodSettings) -> int | None:
    """Training seconds a run may use under max_hours and max_usd (at the pod's price)."""
    limits = []
    if pod.max_hours:
        limits.append(float(pod.max_hours) * 3600)
    price = usd_per_hour(pod)
    if pod.max_usd and price:
        limits.append(float(pod.max_usd) / price * 3600)
    return max(1, int(min(limits))) if limits else None
