"""The config's cross-checks the schema cannot express, and the code fingerprint of the rules.

rules/common.smk calls these once the schema has validated the config; a check that fails
raises ConfigError with one line that names the key to change (Snakemake shows it as is).
Importable and tested in-process (tests/unit/), no Snakemake needed.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

from lora_style.config import train_yaml
from lora_style.config.train_yaml import ConfigError

V1_HOSTS = ("rest.runpod.io",)
V1_GONE = (
    "names RunPod's REST API v1, which RunPod retired on 2026-11-15. Use v2: "
    "https://api.runpod.io/v2 (the default: remove api_url). v2 creates pods with a nested "
    "body, connects through ssh.direct and needs your SSH key registered with RunPod"
)


def retired_v1(url: str) -> bool:
    """Whether an api_url still names RunPod's retired REST API v1."""
    trimmed = url.rstrip("/")
    return any(host in trimmed for host in V1_HOSTS) or trimmed.endswith("/v1")


def check_pods(pods: dict) -> None:
    for name, pod in pods.items():
        if pod.get("provider") == "runpod" and retired_v1(pod["api_url"]):
            raise ConfigError(f"config: pods.{name}.api_url {pod['api_url']} {V1_GONE}")
        # A budget in dollars needs a price: the rented pod's own, else gpu_hourly_usd.
        if pod.get("max_usd") and not pod.get("provider") and pod.get("gpu_hourly_usd") is None:
            raise ConfigError(
                f"config: pods.{name}.max_usd needs pods.{name}.gpu_hourly_usd (the price of a "
                "GPU-hour) to turn dollars into training time; set it, or use max_hours"
            )


def check_config(runs: dict, pods: dict) -> tuple[dict, dict]:
    """Every cross-check; returns each run's complete training arguments (profile + overrides
    + derived keys, LLaMA-Factory's defaults filled in) and the runs' base models by base name."""
    check_pods(pods)
    args: dict = {}
    base_models: dict = {}  # base name -> the runs' base_model
    for run, cfg in runs.items():
        where = f"config: runs.{run}"
        if cfg["pod"] not in pods:
            raise ConfigError(f"{where}.pod: no pod '{cfg['pod']}' under pods: (known: {', '.join(pods)})")
        args[run] = train_yaml.train_args(run, cfg)
        # These reach the jobs' command lines (validate_dataset, metadata): whole numbers only.
        for key in ("cutoff_len", "lora_rank", "lora_alpha"):
            value = args[run].get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(
                    f"{where}.overrides.{key}: {value!r} is not a whole number; set "
                    f"it in runs.{run}.overrides (or the profile), e.g. {key}: 64"
                )
        # Inference must render prompts as training did: the run's LLaMA-Factory template.
        if not args[run].get("template"):
            raise ConfigError(
                f"{where}: the training arguments have no 'template'; set it in the "
                "profile (e.g. template: qwen) so inference can render prompts as "
                "training saw them"
            )
        # One 4-bit base per base name (models.smk): two different models may not share it.
        base = cfg["base_model"]
        name = train_yaml.base_name(base)
        # The name becomes a path of the graph, models/{name}-4bit-mlx (the `base` wildcard).
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(
                f"{where}.base_model: its folder name '{name}' names "
                f"models/{name}-4bit-mlx, which may only use letters, digits, '.', "
                "'_' and '-'; rename the folder"
            )
        if base_models.setdefault(name, base) != base:
            raise ConfigError(
                f"{where}.base_model '{base}' and '{base_models[name]}' would share "
                f"models/{name}-4bit-mlx; rename one of the local model directories"
            )
    return args, base_models


def code_version(*paths: Path) -> str:
    """A fingerprint of Python files' code: their syntax trees without docstrings, so a comment
    or a docstring changes nothing and any change to what the code does changes it. As a rule's
    param, it reruns that rule when, and only when, its code changes."""
    digest = hashlib.sha256()
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        try:
            tree = ast.parse(text)
        except SyntaxError:  # the text then; the job that runs it says what is wrong
            digest.update(text.encode())
            continue
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(body, list)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:16]
