"""What the fake RunPod sells and bills: GPU types, data centers, prices, and pod billing records.

Plain tables and functions, no server: the fake (helpers/fake_runpod.py) answers the catalog and the
billing endpoints from them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

# $/hour per GPU on Secure Cloud (per pod for a CPU flavor); anything else costs `default_price`.
PRICES = {
    "NVIDIA A100-SXM4-80GB": 1.89,
    "NVIDIA A100 80GB PCIe": 1.64,
    "NVIDIA H100 80GB HBM3": 2.99,
    "NVIDIA H100 PCIe": 2.39,
    "NVIDIA H200": 3.99,
    "NVIDIA L40S": 0.86,
    "NVIDIA RTX A6000": 0.49,
    "NVIDIA GeForce RTX 4090": 0.69,
    "NVIDIA A40": 0.40,
}
# Community Cloud costs this share of the Secure Cloud price (the catalog's `price.community`).
COMMUNITY_SHARE = 0.8


@dataclass(frozen=True)
class GpuKind:
    name: str  # the catalog's short name
    memory: int  # GB of VRAM
    max_secure: int  # the largest pod of this type, per cloud (0: not offered there)
    max_community: int


GPUS = {
    "NVIDIA A100-SXM4-80GB": GpuKind("A100 SXM", 80, 8, 8),
    "NVIDIA A100 80GB PCIe": GpuKind("A100 PCIe", 80, 8, 8),
    "NVIDIA H100 80GB HBM3": GpuKind("H100 SXM", 80, 8, 0),
    "NVIDIA H100 PCIe": GpuKind("H100 PCIe", 80, 8, 4),
    "NVIDIA H200": GpuKind("H200 SXM", 141, 8, 0),
    "NVIDIA L40S": GpuKind("L40S", 48, 8, 4),
    "NVIDIA RTX A6000": GpuKind("RTX A6000", 48, 8, 8),
    "NVIDIA GeForce RTX 4090": GpuKind("RTX 4090", 24, 8, 8),
    "NVIDIA A40": GpuKind("A40", 48, 8, 4),
}
# Every GPU type is offered in every data center; the first is where a pod lands by default.
DATA_CENTERS = {
    "EU-RO-1": "EU Romania 1",
    "EU-SE-1": "EU Sweden 1",
    "EU-CZ-1": "EU Czechia 1",
    "US-TX-3": "US Texas 3",
    "US-KS-2": "US Kansas 2",
    "CA-MTL-1": "CA Montreal 1",
}
CPU_FLAVORS = {"cpu3c": 2, "cpu3g": 4, "cpu3m": 8, "cpu5c": 2, "cpu5g": 4, "cpu5m": 8}  # GB/vCPU
HOST_CUDA = "12.8"  # what every GPU host reports

# Pod disk, as RunPod's storage page prices it: container disk and volume $0.10/GB/month while the
# pod runs, the volume $0.20/GB/month while it is stopped; a month is 30 days here.
DISK_RUNNING_PER_GB_MONTH = 0.10
VOLUME_STOPPED_PER_GB_MONTH = 0.20
HOURS_PER_MONTH = 720
BILLED_STATUSES = ("PROVISIONING", "STARTING", "RUNNING", "ERROR")  # the compute is reserved


def country(data_center: str) -> str:
    """EU-RO-1 -> RO, US-TX-3 -> US."""
    region, code, _ = data_center.split("-")
    return code if region == "EU" else region


def price(prices: dict, gpu_id: str, cloud: str, default: float) -> float:
    secure = prices.get(gpu_id, default)
    return secure if cloud == "SECURE" else round(secure * COMMUNITY_SHARE, 2)


def max_count(gpu_id: str, cloud: str) -> int:
    kind = GPUS.get(gpu_id)
    if kind is None:
        return 0
    return kind.max_secure if cloud == "SECURE" else kind.max_community


def in_stock(gpu_id: str, cloud: str, count: int, unavailable: set[str]) -> bool:
    return gpu_id not in unavailable and 1 <= count <= max_count(gpu_id, cloud)


def gpu_type_json(
    gpu_id: str, prices: dict, default_price: float, unavailable: set[str], availability: dict | None
) -> dict:
    """A GpuType of the catalog; `availability` (cloud, count, countries) adds stock."""
    kind = GPUS[gpu_id]
    out = {
        "id": gpu_id,
        "name": kind.name,
        "pool": None,
        "manufacturer": "NVIDIA",
        "memory": kind.memory,
        "secure": kind.max_secure > 0,
        "community": kind.max_community > 0,
        "price": {
            cloud.lower(): price(prices, gpu_id, cloud, default_price) for cloud in ("SECURE", "COMMUNITY")
        },
        "maxCount": {"secure": kind.max_secure, "community": kind.max_community},
    }
    if availability is not None:
        stocked = (
            in_stock(gpu_id, availability["cloud"], availability["count"], unavailable)
            and availability["cuda_ok"]
        )
        centers = [
            dc
            for dc in DATA_CENTERS
            if not availability["countries"] or country(dc) in availability["countries"]
        ]
        level = "HIGH" if stocked and centers else "NONE"
        out["availability"] = level
        if level != "NONE":
            out["dataCenters"] = [
                {"id": dc, "name": DATA_CENTERS[dc], "availability": level} for dc in centers
            ]
        if availability["cuda_ok"]:  # the filters narrow the list too
            out["cudaVersions"] = [{"version": HOST_CUDA, "available": level != "NONE"}]
    return out


def cuda_allowed(allowed: list[str] | None, minimum: str | None) -> bool:
    """Whether the hosts' CUDA satisfies an exact set or a floor (major or major.minor)."""
    host = tuple(int(x) for x in HOST_CUDA.split("."))
    if allowed:
        return HOST_CUDA in allowed
    if minimum:
        floor = tuple(int(x) for x in minimum.split("."))
        return host[: len(floor)] >= floor
    return True


# --- billing -------------------------------------------------------------------------------------

UTC = datetime.UTC


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def bucket_start(moment: datetime.datetime, size: str) -> datetime.datetime:
    moment = moment.astimezone(UTC)
    if size == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if size == "day":
        return day
    if size == "week":  # ISO weeks start on Monday
        return day - datetime.timedelta(days=day.weekday())
    if size == "month":
        return day.replace(day=1)
    return day.replace(month=1, day=1)  # year


def next_bucket(start: datetime.datetime, size: str) -> datetime.datetime:
    if size in ("hour", "day", "week"):
        return start + datetime.timedelta(**{f"{size}s": 1})
    if size == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


def buckets(start: datetime.datetime, end: datetime.datetime, size: str):
    """[start, end) cut into buckets of `size`; start is on a boundary."""
    while start < end:
        following = next_bucket(start, size)
        yield start, following
        start = following


def amounts(
    history: list[tuple[float, str]],
    until: float,
    begin: float,
    end: float,
    *,
    cost_per_hr: float,
    gpu: bool,
    disk_gb: int,
    volume_gb: int,
) -> dict:
    """What a pod cost in [begin, end), from its status history [(unix time, status)] up to
    `until`: compute at `cost_per_hr` while billed, disk as DISK_* above."""
    gpu_usd = cpu_usd = disk_usd = 0.0
    for since, next_since, status in intervals(history, until):
        seconds = max(0.0, min(next_since, until, end) - max(since, begin))
        hours = seconds / 3600
        if status in BILLED_STATUSES:
            compute = hours * cost_per_hr
            if gpu:
                gpu_usd += compute
            else:
                cpu_usd += compute
            disk_usd += hours * (disk_gb + volume_gb) * DISK_RUNNING_PER_GB_MONTH / HOURS_PER_MONTH
        elif status == "EXITED":
            disk_usd += hours * volume_gb * VOLUME_STOPPED_PER_GB_MONTH / HOURS_PER_MONTH
    out = {"gpuAmount": round(gpu_usd, 6), "cpuAmount": round(cpu_usd, 6), "diskAmount": round(disk_usd, 6)}
    out["totalAmount"] = round(sum(out.values()), 6)
    return out


def billed_seconds(history: list[tuple[float, str]], until: float) -> float:
    return sum(
        max(0.0, min(next_since, until) - since)
        for since, next_since, status in intervals(history, until)
        if status in BILLED_STATUSES
    )


def intervals(history: list[tuple[float, str]], until: float):
    """(since, next change or `until`, status) for each status a pod has had."""
    ends = [moment for moment, _ in history[1:]] + [until]
    for (since, status), end in zip(history, ends, strict=True):
        yield since, end, status
