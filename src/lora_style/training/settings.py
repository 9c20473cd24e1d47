"""A pod's settings: its ``pods:`` entry of the config, plus its ``name``, as one frozen object.

``PodSettings`` has one typed field per property of a ``pods:`` entry in the config schema, with
the schema's default (read from it here, once: Snakemake fills the same defaults into the config
it validates), plus ``name`` and ``relaunch`` (``--config relaunch=RUN``, rules/train.smk).
It is built once where settings enter the package, by ``PodSettings.from_entry``: the training
command line's ``--pod-settings`` (remote_train.py), the executor's command line (machines.py),
``prices``/``bill`` (a pods: entry of the config file) and the plan's cost line (plan.py); every
function below takes the object and reads attributes. It is frozen: a rented pod's address is a
new object (``dataclasses.replace``, runpod.rent), never an edit.

The fields after ``relaunch`` are not a config key: runpod.rent fills them for the pod it rented.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from lora_style.paths import SCHEMA

from .messages import PodError


@cache
def defaults() -> dict:
    """{key: default} of a pods: entry, from the schema."""
    # libyaml's loader where PyYAML has it: read at import (the fields' defaults), in every job.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schema = yaml.load(SCHEMA.read_text(encoding="utf-8"), Loader=loader)
    properties = schema["properties"]["pods"]["additionalProperties"]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


_D = defaults()


@dataclass(frozen=True)
class PodSettings:
    """One pod's settings (config/schema/config.schema.yaml, `pods:`), defaults filled in.
    docs/config-reference.md says what each key means."""

    name: str | None = None
    executor: str | None = None  # required by the schema; make_executor names a missing one
    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str = _D["known_hosts"]
    remote_dir: str = _D["remote_dir"]
    llamafactory_cli: str = _D["llamafactory_cli"]
    setup: bool = _D["setup"]
    gpu_hourly_usd: float | None = None
    poll_seconds: float = _D["poll_seconds"]
    reconnect_minutes: float = _D["reconnect_minutes"]
    gpu_type: str | None = None
    gpu_count: int = _D["gpu_count"]
    processes: int | None = None
    max_usd: float | None = None
    max_hours: float | None = None
    provider: str | None = None
    api_key_env: str = _D["api_key_env"]
    api_url: str = _D["api_url"]
    api_retry_minutes: float = _D["api_retry_minutes"]
    cloud_type: str = _D["cloud_type"]
    template_id: str | None = None
    image: str | None = None
    volume_gb: int = _D["volume_gb"]
    container_disk_gb: int = _D["container_disk_gb"]
    network_volume_id: str | None = None
    register_ssh_key: bool = _D["register_ssh_key"]
    on_finish: str = _D["on_finish"]
    idle_stop_minutes: float = _D["idle_stop_minutes"]
    boot_minutes: float = _D["boot_minutes"]
    partition: str | None = None
    gpus: int | None = None
    time: str | int | None = None
    nodes: int | None = None
    sbatch_args: tuple[str, ...] | None = None
    # Not a pods: key: --config relaunch=RUN asks to train RUN again from step 0 (follow.py).
    relaunch: bool = False
    # Not config keys (from_entry refuses them): what runpod.rent learns of the pod it rented.
    pod_id: str | None = None
    host_key_alias: str | None = None  # the rented pod's host key is pinned to its id
    pod_usd_per_hour: float | None = None  # the rented pod's own price, all its GPUs
    # Asked when SSH fails (reconnect.py): a rented pod that RunPod stopped ends the wait.
    on_lost_contact: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.sbatch_args, list):  # frozen all the way down
            object.__setattr__(self, "sbatch_args", tuple(self.sbatch_args))

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> PodSettings:
        """A pods: entry (with its `name`, and `relaunch` where asked) as settings: every default
        it leaves out (or sets to null) filled in; a key the schema does not know is refused."""
        unknown = sorted(set(entry).difference(ENTRY_KEYS))
        if unknown:
            at = f"pods.{entry.get('name') or '?'}"
            raise PodError(
                f"{at}.{unknown[0]}: not a key of a pods: entry (config/schema/config.schema.yaml, "
                "docs/config-reference.md)"
            )
        return cls(**{key: value for key, value in entry.items() if value is not None})

    def as_entry(self) -> dict:
        """The settings as the pods: entry they came from (JSON-ready, from_entry's inverse): what
        is set, the defaults included, without the runtime fields and the callback."""
        entry = {key: getattr(self, key) for key in ENTRY_KEYS if getattr(self, key) is not None}
        if not self.relaunch:
            del entry["relaunch"]
        if self.sbatch_args is not None:
            entry["sbatch_args"] = list(self.sbatch_args)
        return entry


# What a pods: entry may hold: the schema's keys, the pod's name, and relaunch.
RUNTIME_FIELDS = ("pod_id", "host_key_alias", "pod_usd_per_hour", "on_lost_contact")
ENTRY_KEYS = tuple(f.name for f in dataclasses.fields(PodSettings) if f.name not in RUNTIME_FIELDS)


def load_settings(value: str) -> PodSettings:
    """A pod's settings: JSON text (what the rules pass), or the path of a JSON file."""
    inline = value.lstrip().startswith("{")
    where = "--pod-settings (JSON text)" if inline else f"--pod-settings file {value}"
    try:
        text = value if inline else Path(value).read_text(encoding="utf-8")
        settings = json.loads(text)
    except OSError as exc:
        raise PodError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PodError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise PodError(f"{where} is not a JSON object (a pods: entry with its name)")
    return PodSettings.from_entry(settings)
