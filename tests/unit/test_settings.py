"""A pod's settings (lora_style/training/settings.py): one frozen object whose fields and defaults
are the config schema's `pods:` entry, built once from an entry, a key it does not know refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from lora_style.paths import SCHEMA
from lora_style.training.messages import PodError
from lora_style.training.settings import RUNTIME_FIELDS, PodSettings, load_settings

PYTHON_TYPE = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "tuple"}


def pods_properties() -> dict:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    return schema["properties"]["pods"]["additionalProperties"]["properties"]


def test_the_fields_and_defaults_are_the_schemas():
    properties = pods_properties()
    fields = {f.name: f for f in dataclasses.fields(PodSettings)}
    assert set(fields) - set(properties) == {"name", "relaunch", *RUNTIME_FIELDS}
    assert set(properties) <= set(fields)
    for key, spec in properties.items():
        assert fields[key].default == spec.get("default"), key
        types = spec.get("type", "string")  # an enum of names is a string
        for kind in [types] if isinstance(types, str) else types:
            assert PYTHON_TYPE[kind] in str(fields[key].type), (key, fields[key].type)
    assert PodSettings().remote_dir == "lora-runs" and PodSettings().relaunch is False


def test_from_entry_fills_the_defaults_and_refuses_an_unknown_key():
    settings = PodSettings.from_entry({"name": "gpu", "executor": "ssh", "host": "h", "port": None})
    assert (settings.port, settings.poll_seconds, settings.api_url) == (None, 30, "https://api.runpod.io/v2")
    assert PodSettings.from_entry({"remote_dir": None}).remote_dir == "lora-runs"  # null: the default
    with pytest.raises(PodError, match=r"^pods\.gpu\.hots: not a key of a pods: entry"):
        PodSettings.from_entry({"name": "gpu", "executor": "ssh", "hots": "h"})
    with pytest.raises(PodError, match=r"pods\.gpu\.pod_id: not a key"):  # runpod.rent's, not the config's
        PodSettings.from_entry({"name": "gpu", "pod_id": "abc"})


def test_it_is_frozen_and_a_rented_pod_is_a_new_object():
    settings = PodSettings.from_entry({"name": "gpu", "executor": "slurm", "sbatch_args": ["--qos=long"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.host = "elsewhere"  # type: ignore[misc]
    assert settings.sbatch_args == ("--qos=long",)  # frozen all the way down
    rented = dataclasses.replace(settings, host="203.0.113.7", port=2222, on_lost_contact=lambda: None)
    assert (settings.host, rented.host, rented.port) == (None, "203.0.113.7", 2222)
    assert rented == dataclasses.replace(settings, host="203.0.113.7", port=2222)  # the callback aside


def test_as_entry_is_the_json_the_entry_was():
    entry = {"name": "p", "executor": "slurm", "sbatch_args": ["--qos=long"], "relaunch": True}
    settings = load_settings(json.dumps(entry))
    assert PodSettings.from_entry(settings.as_entry()) == settings
    as_json = json.loads(json.dumps(settings.as_entry()))
    assert {key: as_json[key] for key in entry} == entry
    assert as_json["remote_dir"] == "lora-runs" and "pod_id" not in as_json
    assert "relaunch" not in PodSettings(name="p").as_entry()  # as the rules leave it out
