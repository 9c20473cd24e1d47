"""Setup of a fresh pod (`setup: true`): what it lacks, and the commands that install it.

tmux, rsync, LLaMA-Factory with the guide's extras (by package name: 0.9.5 declares no extras),
and the run's own packages at the versions LLaMA-Factory requires (preflight.run_packages). The
pod is probed as preflight probes it; setup.sh runs the steps and logs them on the pod.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from .executor import Executor
from .messages import PodError, Say
from .preflight import (
    LLAMAFACTORY_VERSION,
    SETUP_MODULES,
    TEMPLATE_DIR,
    Need,
    imported,
    probe,
    run_packages,
    unmet,
)
from .run_state import now_iso
from .settings import PodSettings
from .shell import first


def setup_plan(
    facts: dict,
    version: str = LLAMAFACTORY_VERSION,
    rsync: bool = False,
    needs: Sequence[Need] = (),
    login_node: bool = False,
) -> list[dict]:
    """What a fresh pod lacks and the command that installs it; empty when nothing is missing.

    rsync: the pod needs rsync too (the ssh executor's file transfers); needs: the run's packages
    (run_packages), installed where they do not import or are of a version LLaMA-Factory refuses;
    login_node: a Slurm cluster's, where pip installs into the run's environment and nothing else
    (sbatch detaches the training: no tmux; a login node is no place for apt-get)."""
    plan = []
    wanted = [*([] if login_node else ["tmux"]), *(["rsync"] if rsync else [])]
    packages = [name for name in wanted if name not in facts]
    apt = "apt_get" in facts and not login_node
    if packages and apt:
        plan.append(
            {
                "install": " ".join(packages),
                "command": "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                + " ".join(packages),
            }
        )
    elif "tmux" in packages:
        plan.append(
            {
                "install": "tmux",
                "command": None,
                "note": "no apt-get: training runs under setsid nohup instead",
            }
        )
    if "rsync" in packages and not apt:
        plan.append(
            {
                "install": "rsync",
                "command": None,
                "note": "no apt-get: install rsync on the pod by hand (the upload needs it)",
            }
        )
    python = first(facts, "python")
    pip = [*(shlex.split(python) if python else ["python3"]), "-m", "pip", "install", "-q"]
    missing = " ".join(facts.get("missing_modules", [])).split()
    found = imported(facts)
    extra = [need for need in needs if unmet(need, found)]
    if not first(facts, "cli") or missing:
        # The guide's step 1 is `pip install -e ".[metrics,bitsandbytes,qwen]"` in the template's
        # checkout; LLaMA-Factory 0.9.5 declares no extras (pip would warn and install it without
        # them), so their packages go by name, from the checkout or the PyPI wheel.
        base = ["-e", TEMPLATE_DIR] if "template_dir" in facts else [f"llamafactory=={version}"]
        plan.append(
            {
                "install": "llamafactory[metrics,bitsandbytes,qwen]",
                "missing": missing or ["llamafactory-cli"],
                "command": shlex.join(
                    [*pip, *base, *SETUP_MODULES.values(), *(need.requirement for need in extra)]
                ),
            }
        )
    elif extra:
        plan.append(
            {
                "install": " ".join(need.requirement for need in extra),
                "missing": [need.module for need in extra],
                "command": shlex.join([*pip, *(need.requirement for need in extra)]),
            }
        )
    return plan


def setup_args(plan: list[dict], remote_dir: str) -> list[str]:
    """setup.sh's arguments: the folder for its log, then each runnable step's number and command."""
    args = [remote_dir]
    for number, step in enumerate(plan):
        if step.get("command"):
            args += [str(number), step["command"]]
    return args


def pod_setup(ex: Executor, settings: PodSettings, say: Say, args: dict | None = None) -> dict:
    """Install what a fresh pod lacks (tmux, LLaMA-Factory with extras, what the run's `args`
    need); record what was done."""
    remote_dir = settings.remote_dir
    needs = run_packages(args or {})
    facts = probe(ex, remote_dir, settings.llamafactory_cli, needs, for_setup=True).facts
    plan = setup_plan(facts, rsync=ex.transport.kind == "ssh", needs=needs, login_node=ex.kind == "slurm")
    record = {"at": now_iso(), "plan": plan, "installed": []}
    runnable = [step for step in plan if step.get("command")]
    if not runnable:
        tools = [
            *(["tmux"] if ex.kind != "slurm" else []),
            *(["rsync"] if ex.transport.kind == "ssh" else []),
        ]
        say(
            f"setup: {ex.where()} has {', '.join([*tools, 'LLaMA-Factory'])} with its extras and "
            "the run's packages; nothing to install"
        )
        return record
    say("setup: installing " + ", ".join(step["install"] for step in runnable) + " (this takes minutes)")
    result = ex.run("setup.sh", *setup_args(plan, remote_dir), timeout=3600)
    for value in result.facts.get("step", []):
        number, _, rc = value.partition(" ")
        step = plan[int(number)]
        (record["installed"] if rc == "0" else record.setdefault("failed", [])).append(step["install"])
    if result.rc:
        raise PodError(
            f"setup failed on {ex.where()} for {', '.join(record.get('failed', []))}; "
            f"see {remote_dir}/lora-pipeline-setup.log there"
        )
    return record
