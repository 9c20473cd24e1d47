"""Every config problem the workflow refuses at its start, each in one line that names the key and
the fix: checked in-process, as the Snakefile checks them (rules/common.smk: the schema through
snakemake.utils.validate, each problem explained by lora_style.config.errors, then
lora_style.config.checks.check_config). tests/graph/test_config.py runs the same through
`snakemake -n` once per stage, to show the workflow says them."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import update_config, validate

from lora_style.config import errors as config_errors
from lora_style.config.checks import check_config
from lora_style.config.train_yaml import ConfigError
from lora_style.paths import SCHEMA

from helpers.workflow import REPO

DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

SCHEMA_CASES = [
    (
        {"runs": {"lovecraft": {"learning_rate": 1e-4}}},
        "config: runs.lovecraft: unknown key 'learning_rate'",
    ),
    ({"typo_top_level": 1}, "config: unknown key 'typo_top_level'"),
    ({"pods": {"runpod": {"hots": "1.2.3.4"}}}, "config: pods.runpod: unknown key 'hots'"),
    (
        {"pods": {"runpod": {"port": "twenty-two"}}},
        "config: pods.runpod.port: 'twenty-two' is a string, expected integer",
    ),
    ({"pods": {"runpod": {"port": 70000}}}, "config: pods.runpod.port: 70000"),
    (
        {"runs": {"lovecraft": {"author": 42}}},
        "config: runs.lovecraft.author: 42 is a number, expected string",
    ),
    (
        {"pods": {"runpod": {"executor": "kubernetes"}}},
        "config: pods.runpod.executor: 'kubernetes' is not one of ssh, local, slurm",
    ),
    (
        {"runs": {"bad name!": {"data": "x", "base_model": "a/b", "profile": "tiny_cpu", "pod": "runpod"}}},
        "config: runs: name 'bad name!' may only use letters, digits, '_' and '-'",
    ),
    (
        {"runs": {"../escape": {"data": "x", "base_model": "a/b", "profile": "tiny_cpu", "pod": "runpod"}}},
        "config: runs: name '../escape' may only use",
    ),
    (
        {"runs": {"second": {"data": "x", "base_model": "a/b", "pod": "runpod"}}},
        "config: runs.second: 'profile' is missing",
    ),
    ({"pods": {"other": {"executor": "ssh"}}}, "config: pods.other: 'host' is missing"),
    (
        {"pods": {"rented": {"executor": "ssh", "provider": "runpod", "image": "x"}}},
        "config: pods.rented: 'gpu_type' is missing",
    ),
    (
        {"pods": {"rented": {"executor": "ssh", "provider": "runpod", "gpu_type": "NVIDIA A40"}}},
        "config: pods.rented: set exactly one of image, template_id",
    ),
    (
        {
            "pods": {
                "rented": {
                    "executor": "local",
                    "provider": "runpod",
                    "gpu_type": "NVIDIA A40",
                    "image": "x",
                }
            }
        },
        "config: pods.rented.executor: must be 'ssh' here, not 'local'",
    ),
    (
        {
            "pods": {
                "rented": {
                    "executor": "ssh",
                    "provider": "runpod",
                    "gpu_type": "NVIDIA A40",
                    "image": "x",
                    "on_finish": "pause",
                }
            }
        },
        "config: pods.rented.on_finish: 'pause' is not one of stop, terminate, keep",
    ),
    (
        {
            "pods": {
                "rented": {
                    "executor": "ssh",
                    "provider": "runpod",
                    "gpu_type": "NVIDIA A40",
                    "image": "x",
                    "idle_stop_minutes": 0.001,
                }
            }
        },
        "config: pods.rented.idle_stop_minutes: 0.001 is less than the minimum of 0.1",
    ),
]

CROSS_CHECK_CASES = [
    (
        {"runs": {"lovecraft": {"overrides": {"lora_rnak": 8}}}},
        "runs.lovecraft.overrides: 'lora_rnak' is not a LLaMA-Factory training key; "
        "did you mean 'lora_rank'?",
    ),
    (
        {"runs": {"lovecraft": {"overrides": {"output_dir": "x"}}}},
        "'output_dir' is set from the pipeline",
    ),
    (
        {"runs": {"lovecraft": {"profile": "qwen25_70b"}}},
        "config: runs.lovecraft.profile: profile 'qwen25_70b' has no file",
    ),
    ({"runs": {"lovecraft": {"pod": "nowhere"}}}, "runs.lovecraft.pod: no pod 'nowhere'"),
    (
        {"runs": {"lovecraft": {"overrides": {"template": None}}}},
        "runs.lovecraft: the training arguments have no 'template'",
    ),
    (
        {"runs": {"lovecraft": {"base_model": "not a hub id"}}},
        "runs.lovecraft.base_model: 'not a hub id' is neither a hub id",
    ),
    (
        {"pods": {"here": {"executor": "local", "max_usd": 40}}},
        "config: pods.here.max_usd needs pods.here.gpu_hourly_usd",
    ),
    (
        {
            "pods": {
                "rented": {
                    "executor": "ssh",
                    "provider": "runpod",
                    "gpu_type": "NVIDIA A40",
                    "image": "x",
                    "api_url": "https://rest.runpod.io/v1",
                }
            }
        },
        "config: pods.rented.api_url https://rest.runpod.io/v1 names RunPod's REST API v1, which "
        "RunPod retired on 2026-11-15. Use v2: https://api.runpod.io/v2",
    ),
    (
        {
            "runs": {
                "second": {
                    "data": "x",
                    "base_model": "./other/Qwen2.5-32B",
                    "profile": "tiny_cpu",
                    "pod": "runpod",
                }
            }
        },
        "would share models/Qwen2.5-32B-4bit-mlx; rename one of the local model directories",
    ),
]


def problems(overlay: dict) -> list[str]:
    """What the workflow says of config.yaml with `overlay` on top (as --configfile puts it)."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    update_config(config, overlay)
    try:
        validate(config, schema=str(SCHEMA))
    except Exception:
        return config_errors.explain(config, yaml.safe_load(SCHEMA.read_text()))
    try:
        check_config(config["runs"], config["pods"])
    except ConfigError as exc:
        return str(exc).splitlines()
    return []


@pytest.mark.parametrize("overlay,needle", SCHEMA_CASES)
def test_schema_rejects_with_a_message_that_names_the_key(overlay, needle):
    said = problems(overlay)
    assert said and said[0].startswith("config") and needle in said[0], said
    assert not any("Failed validating" in line for line in said), "one line per problem, not the schema dump"


@pytest.mark.parametrize("overlay,needle", CROSS_CHECK_CASES)
def test_cross_checks_fail_on_the_laptop_in_seconds(tmp_path, monkeypatch, overlay, needle):
    monkeypatch.chdir(tmp_path)  # where snakemake --directory would run
    said = problems(overlay)
    assert said and needle in said[0], said
