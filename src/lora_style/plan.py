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


# The reference evaluation after training (training/eval.sh): loading the base and the adapter
# (measured on the CPU demo: 21 s; a 4-bit 32B from the pod's disk: a few minutes), then one
# forward pass per example, a third of a training example's forward and backward.
REFERENCE_LOAD_MINUTES = 3.0


def reference_eval_minutes(estimate: cost.Estimate, args: dict, examples: int) -> float | None:
    """Pod minutes of the chosen checkpoint's evaluation on `examples` held-out examples."""
    if not estimate.rate:
        return None
    per_step = int(args.get("per_device_train_batch_size", 1)) * int(
        args.get("gradient_accumulation_steps", 1)
    )
    per_example_s = 3600 / estimate.rate / max(per_step * max(estimate.gpus, 1), 1)
    return REFERENCE_LOAD_MINUTES + examples * per_example_s / 3 / 60


def reference_eval_note(estimate: cost.Estimate, args: dict, examples: int) -> str:
    """What the plan line adds for the reference evaluation (fidelity.reference)."""
    minutes = reference_eval_minutes(estimate, args, examples)
    text = f"then up to {examples} held-out examples evaluated on the pod"
    if minutes is None:
        return text
    text += f", ~{minutes:.0f} min"
    if estimate.gpu_hourly_usd is not None:
        text += f" (~${minutes / 60 * estimate.gpu_hourly_usd * max(estimate.gpus, 1):.2f})"
    return text


def plan_line(run: str, planned_rules: set[str], estimate, reference=None) -> str:
    """The run's line in the plan, from the rules of its jobs the plan runs; `estimate` is called
    only when the plan trains. `reference(estimate)`, given, says what the reference evaluation
    after training adds."""
    if planned_rules & TRAINING_RULES:
        found = estimate()
        extra = f"; {reference(found)}" if reference else ""
        return f"{run}_mlx: trains in this plan ({found.line()}{extra})"
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
