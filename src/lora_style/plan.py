"""What the plan (`snakemake -n`) says before anything is spent: each run's training cost line,
and the pods whose address is still the shipped placeholder.

Plain functions over the config; rules/common.smk calls them, and the one piece that needs
Snakemake's internals (which jobs the plan runs) is passed in as a set of rule names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lora_style.fileio import count_lines
from lora_style.training import cost, runpod_catalog
from lora_style.training.settings import PodSettings

POD_PLACEHOLDER = "POD_IP"
# The rules that contact a run's pod: a real run stops before them on a placeholder address.
POD_RULES = {"preflight", "submit_training", "wait_training", "best_checkpoint"}
TRAINING_RULES = {"submit_training", "wait_training"}


def training_estimate(run: str, cfg: dict, args: dict, pod: Mapping, workdir: Path) -> cost.Estimate:
    """The plan's estimate of one run's training on its pod (its pods: entry with its `name`)."""
    settings = PodSettings.from_entry(pod)
    examples = None
    if int(args.get("max_steps") or -1) <= 0:  # epochs: the data's examples decide the steps
        try:
            examples = count_lines(cfg["data"])
        except OSError:
            examples = 0  # validate_dataset names the missing file
    # A rented pod: RunPod's list price from the last catalog read (.state/runpod/catalog.json),
    # never a request (a dry run opens no connection).
    listed = (
        runpod_catalog.list_price(workdir, settings.gpu_type, settings.cloud_type)
        if settings.provider == "runpod"
        else None
    )
    return cost.estimate(run, args, cfg["profile"], settings, examples, listed, workdir)


def plan_line(run: str, planned_rules: set[str], estimate) -> str:
    """The run's line in the plan, from the rules of its jobs the plan runs; `estimate` is called
    only when the plan trains."""
    if planned_rules & TRAINING_RULES:
        return f"{run}_mlx: trains in this plan ({estimate().line()})"
    if "best_checkpoint" in planned_rules:
        return f"{run}_mlx: no training in this plan, only the download of a finished one"
    return f"{run}_mlx: nothing to train in this plan: no GPU time"


def placeholder_pods(runs: dict, pods: dict) -> list[str]:
    """The pods runs train on whose host is still the shipped placeholder."""
    return sorted(
        {
            cfg["pod"]
            for cfg in runs.values()
            if pods[cfg["pod"]].get("host") == POD_PLACEHOLDER and not pods[cfg["pod"]].get("provider")
        }
    )


def placeholder_advice(name: str) -> str:
    return (
        f"pods.{name}.host is the placeholder {POD_PLACEHOLDER}: replace it with your pod's "
        "address (RunPod: Connect -> 'SSH over exposed TCP' shows `ssh root@<IP> -p <PORT>`; "
        "set host and port), or rent one from the graph with provider: runpod"
    )


def refused_placeholder(runs: dict, pods: dict, planned: list[tuple[str, str]]) -> str | None:
    """The error of a real run that would contact a placeholder pod; `planned` is the plan's
    (rule name, run) pairs."""
    needed = {runs[run]["pod"] for rule, run in planned if rule in POD_RULES and run in runs}
    for name in placeholder_pods(runs, pods):
        if name in needed:
            return f"config: {placeholder_advice(name)}. Nothing was run."
    return None
