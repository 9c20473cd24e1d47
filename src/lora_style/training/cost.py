"""What a run's training costs: the plan's estimate, and the GPU time it used.

The estimate is the steps the run will take (``max_steps``, else epochs x examples / effective
batch: estimate.planned_steps; with early stopping, the most it will take) at a measured rate,
times the pod's price. The rate is the one this project's own finished runs measured on the same
profile, GPU type and count, cutoff_len and packing (``.state/rates.json``, written after each
fetch: record_rate), else config/rates.yaml's (steps per hour by profile and GPU type). The price: ``gpu_hourly_usd`` is the price of one GPU-hour, and every
GPU the training uses (``gpu_count``) is paid for. The cost after is the
wall time of every training attempt (attempts.log on the pod) times the same price, or the rented
pod's own price once it runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import yaml

from lora_style.fileio import write_atomic
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


# The rates this project's own runs measured, in the project's folder (never config/).
LEARNED_RATES = Path(".state") / "rates.json"
LEARNED_RUNS = 3  # the plan averages the newest this many runs of the same kind


def rate_key(profile: str | None, gpu_type: str | None, gpus: int, cutoff_len, packing) -> dict:
    """What makes two runs' rates comparable: the profile, the GPU type and count, the sequence
    length and packing (which sets how many tokens a step holds)."""
    return {
        "profile": profile,
        "gpu_type": gpu_type or "default",
        "gpus": int(gpus),
        "cutoff_len": cutoff_len,
        "packing": bool(packing),
    }


def read_learned(workdir: Path | str = ".") -> list[dict]:
    """Every run .state/rates.json records; an unreadable file is no record (the plan then uses
    config/rates.yaml), never an error before a run."""
    try:
        data = json.loads((Path(workdir) / LEARNED_RATES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    runs = data.get("runs") if isinstance(data, dict) else None
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def learned_rate(key: dict, workdir: Path | str = ".") -> tuple[float, int] | None:
    """(steps per hour, how many runs) over the newest LEARNED_RUNS runs with this key."""
    same = [r for r in read_learned(workdir) if all(r.get(k) == v for k, v in key.items())]
    same = [r for r in same if r.get("steps") and r.get("wall_seconds")][-LEARNED_RUNS:]
    if not same:
        return None
    hours = sum(r["wall_seconds"] for r in same) / 3600
    return sum(r["steps"] for r in same) / hours, len(same)


def record_rate(
    key: dict,
    run: str,
    run_id: str,
    steps: int,
    wall_seconds: float,
    tokens: int | None,
    workdir: Path | str = ".",
) -> dict | None:
    """Add a finished run's measured rate to .state/rates.json (one entry per run_id, the newest
    kept); returns the entry, or None when the run has no time to measure."""
    if not steps or not wall_seconds or wall_seconds <= 0:
        return None
    entry = {
        **key,
        "run": run,
        "run_id": run_id,
        "steps": int(steps),
        "wall_seconds": round(float(wall_seconds), 3),
        "steps_per_hour": round(steps / wall_seconds * 3600, 3),
        "tokens_per_second": round(tokens / wall_seconds, 1) if tokens else None,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    runs = [r for r in read_learned(workdir) if r.get("run_id") != run_id] + [entry]
    path = Path(workdir) / LEARNED_RATES
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps({"runs": runs}, indent=2) + "\n").encode())
    return entry


def rate_text(steps_per_hour: float) -> str:
    """84, 1,895, 21,600: whole steps per hour, or two digits below 10."""
    return f"{steps_per_hour:,.0f}" if steps_per_hour >= 10 else f"{steps_per_hour:.2g}"


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
    rate_source: str | None = None  # "from config/rates.yaml", "measured on your last 2 runs"
    patience: int | None = None  # early stopping: evaluations without a better eval_loss
    cutoff_len: int | None = None
    packing: bool | None = None
    eval_steps: int | None = None
    tokens_per_step: int | None = None  # with packing: every sequence is cutoff_len tokens
    budget_s: int | None = None  # the pod's max_hours / max_usd in seconds of training

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

    @property
    def usd_per_step(self) -> float | None:
        return self.usd / self.steps if self.usd is not None and self.steps else None

    def step_within(self, budget_s: float | None) -> int | None:
        """The step a training budget (seconds of wall time) ends the run at, at this rate,
        or None when it does not end it before the last step."""
        if not budget_s or not self.rate:
            return None
        step = int(budget_s / 3600 * self.rate)
        return step if step < self.steps else None

    def stops_early(self) -> str:
        return (
            f"stops early when eval_loss has not improved for {self.patience} evaluation"
            f"{'s' * (self.patience != 1)}"
        )

    def line(self) -> str:
        """`lovecraft: up to 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h =
        ~$13.50 at most (stops early when eval_loss has not improved for 2 evaluations; 84 steps/h
        from config/rates.yaml)`"""
        on = f"{self.gpus} x {short_gpu(self.gpu_type)}" if self.gpu_type else self.where
        text = f"{self.run}: {'up to ' if self.patience else ''}{self.steps} steps"
        notes = [self.stops_early()] if self.patience else []
        if self.rate and self.rate_source:
            notes.append(f"{rate_text(self.rate)} steps/h {self.rate_source}")
        if self.price_source:
            notes.append(self.price_source)
        cut = self.step_within(self.budget_s)
        if cut is not None:
            notes.append(f"the budget (max_usd / max_hours) stops it at about step {cut}")
        said = f" ({'; '.join(notes)})" if notes else ""
        if self.gpu_hours is None:
            return (
                f"{text} on {on}; no measured rate for this profile on this GPU, so no time or "
                "cost estimate (add one to config/rates.yaml, or finish one run: its rate is "
                f"learned){said}"
            )
        if self.gpus > 1 and self.gpu_type:
            # Several GPUs: the wall time too, and a price that reads as per GPU.
            text += f", ~{self.gpu_hours:.1f} GPU-hours ({self.hours:.1f} h on {on})"
            per = " per GPU-hour"
        else:
            text += f", ~{self.gpu_hours:.1f} {'GPU-hours' if self.gpu_type else 'hours'} on {on}"
            per = "/h"
        if self.usd is None:
            return f"{text}{said}; no price (set gpu_hourly_usd on the pod for a cost)"
        text += f" at ${self.gpu_hourly_usd:.2f}{per} = ~${self.usd:.2f}"
        return f"{text}{' at most' if self.patience else ''}{said}"

    def as_dict(self) -> dict:
        return {**asdict(self), "gpu_hours": self.gpu_hours, "usd": self.usd}


def estimate(
    run: str,
    args: dict,
    profile: str,
    pod: PodSettings,
    examples: int | None,
    listed: tuple[float, str] | None = None,
    workdir: Path | str | None = None,
) -> Estimate:
    """The plan's estimate for one run on its pod. examples is only needed without max_steps.
    `listed`: RunPod's list price of one GPU-hour and how old that read is (runpod_catalog), which
    a rented pod's line prefers to gpu_hourly_usd. `workdir`: the project folder whose
    .state/rates.json (the rates of its finished runs) wins over config/rates.yaml."""
    gpus = gpus_paid(pod)
    key = rate_key(profile, pod.gpu_type, gpus, args.get("cutoff_len"), args.get("packing"))
    learned = learned_rate(key, workdir) if workdir is not None else None
    if learned:
        rate, runs = learned
        rate_source = f"measured on your last {runs} run{'s' * (runs != 1)} ({LEARNED_RATES})"
    else:
        rate = steps_per_hour(profile, pod.gpu_type)
        rate_source = "from config/rates.yaml" if rate else None
    # The effective batch spans every training process (CPU processes too: `processes`).
    steps = planned_steps(args, examples or 0, world_size(pod))
    where = "this machine" if pod.executor == "local" else f"pod '{pod.name or '?'}'"
    price, source = pod.gpu_hourly_usd, None
    if listed is not None:
        price, source = listed[0], f"RunPod's list price, read {listed[1]}"
    return Estimate(
        run,
        steps,
        rate,
        gpus,
        pod.gpu_type,
        price,
        where,
        profile,
        source,
        rate_source,
        args.get("early_stopping_steps"),
        args.get("cutoff_len"),
        args.get("packing"),
        args.get("eval_steps"),
        tokens_per_step(args, world_size(pod)),
        budget_seconds(pod) if price is not None or pod.max_hours else None,
    )


def tokens_per_step(args: dict, processes: int) -> int | None:
    """Tokens one optimizer step trains on: known only with packing (each sequence filled to
    cutoff_len); without it a step's length depends on the examples."""
    if not args.get("packing") or not args.get("cutoff_len"):
        return None
    batch = int(args.get("per_device_train_batch_size") or 1) * int(
        args.get("gradient_accumulation_steps") or 1
    )
    return batch * max(1, processes) * int(args["cutoff_len"])


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


def project(step: int, total: int, steps_per_s: float, used_s: float, pod: dict) -> dict:
    """While it trains: the seconds to the last step at the rate the steps so far timed, the
    cost of the whole run (the time paid so far plus that), and, when a budget (max_hours,
    max_usd) ends it first, the step it ends at."""
    remaining = max(0, total - step) / steps_per_s if steps_per_s > 0 else None
    price = usd_per_hour(pod)
    out: dict = {"remaining_s": remaining, "usd": None, "cut_step": None, "budget_s": budget_seconds(pod)}
    if remaining is not None and price is not None:
        out["usd"] = (used_s + remaining) / 3600 * price
    if out["budget_s"] is not None and steps_per_s > 0:
        cut = step + int(max(0.0, out["budget_s"] - used_s) * steps_per_s)
        out["cut_step"] = cut if cut < total else None
    return out
