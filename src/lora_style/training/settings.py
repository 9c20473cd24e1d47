"""A pod's settings: its ``pods:`` entry of the config, plus its ``name``.

The defaults (remote_dir, llamafactory_cli, known_hosts, poll_seconds, reconnect_minutes, setup)
are the config schema's, read from it here, so each is written once: Snakemake fills them into
the config it validates, and a pod entry built by hand (a test, the executor's CLI) gets the same.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml

from lora_style.paths import SCHEMA

from .messages import PodError


@cache
def defaults() -> dict:
    """{key: default} of a pods: entry, from the schema."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    properties = schema["properties"]["pods"]["additionalProperties"]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


def with_defaults(settings: dict) -> dict:
    """The settings with every default the entry leaves out (or sets to null) filled in."""
    return {**defaults(), **{k: v for k, v in settings.items() if v is not None}}


def load_settings(value: str) -> dict:
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
    return settings
