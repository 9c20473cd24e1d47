# Shared helpers: config validation, wildcard constraints, and the get_* functions that map a
# run to its files and settings. Every path pattern of the graph is derived here or in the rule
# that writes it, once.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lora_style import plan
from lora_style.config import checks, train_yaml
from lora_style.config import errors as config_errors
from lora_style.report import bundle_help

# The project's package, installed in the environment that runs Snakemake (`pip install -e .`:
# the Makefile's .venv, or environment.yml under --sdm conda). A job's `python` is that
# environment's: the Makefile puts .venv/bin first on PATH, as activating the venv does.
SRC = Path(workflow.basedir).resolve() / "src" / "lora_style"


def _shell_escape(text):
    """Quoted for the shell, braces doubled: shell.prefix() goes through Snakemake's format()."""
    return shlex.quote(str(text)).replace("{", "{{").replace("}", "}}")


# What every job's shell gets: `logged LOG COMMAND...` (scripts/logged.sh), how every rule logs,
# the output live on the terminal and in the log, and the log's end again when the command
# fails. A shell function, not a {LOGGED} path in every shell string, which `snakemake --lint`
# flags (a global in one). The prefix is no part of a rule's code as Snakemake hashes it
# (rule.shellcmd), so its absolute path changes no rule's code when the checkout moves.
# `set -euo pipefail` is Snakemake's own default prefix, kept.
shell.prefix(
    "set -euo pipefail; "
    f"logged() {{{{ sh {_shell_escape(Path(workflow.basedir).resolve() / 'scripts' / 'logged.sh')} \"$@\"; }}}}; "
)


# For `--sdm conda`: environment.yml holds the local side's pins itself (no `-r` file, which a
# conda env built from a copy of it could not resolve); a test keeps them equal to
# requirements/local.txt. Without --sdm conda, Snakemake ignores it.
LOCAL_ENV = "../environment.yml"


def code_version(*modules):
    """A fingerprint of modules' code (paths under src/lora_style/): their syntax trees without
    docstrings, so a comment or a docstring changes nothing and any change to what the code
    does changes it. As a param, it reruns the rules that use it when, and only when, their
    code changes."""
    return checks.code_version(*(SRC / module for module in modules))


try:
    validate(config, schema="../config/schema/config.schema.yaml")
except WorkflowError:
    # Same check, one line per problem instead of the whole schema.
    import yaml

    with open(
        Path(workflow.basedir) / "config" / "schema" / "config.schema.yaml"
    ) as _f:
        raise WorkflowError(
            "\n".join(config_errors.explain(config, yaml.safe_load(_f)))
        ) from None

RUNS = config["runs"]
PODS = config["pods"]
# Runs that may train again from step 0 when their folder is gone from the pod: asked for on the
# command line (--config relaunch=RUN[,RUN...]), for that call only (lora_style/training/follow.py).
RELAUNCH = set(filter(None, str(config.get("relaunch", "")).split(",")))
for _run in sorted(RELAUNCH - set(RUNS)):
    raise WorkflowError(
        f"config: relaunch: no run '{_run}' under runs: (known: {', '.join(RUNS)})"
    )


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    base="[A-Za-z0-9_.-]+",


# The complete LLaMA-Factory arguments of each run (profile + overrides + derived keys, with
# LLaMA-Factory's defaults filled in), and the base models the runs share (models.smk); the
# cross-checks the schema cannot express (lora_style/config/checks.py) fail here, in seconds.
try:
    TRAIN_ARGS, BASE_MODELS = checks.check_config(RUNS, PODS)
except train_yaml.ConfigError as exc:
    raise WorkflowError(str(exc)) from None


def _quant_candidates():
    """{base name: {candidate name: its mlx_lm.convert options}} from the runs' fidelity
    settings; two runs on one base must not give one name two meanings."""
    found = {}
    for run, cfg in RUNS.items():
        base = train_yaml.base_name(cfg["base_model"])
        for spec in cfg["fidelity"]["quant_candidates"]:
            spec = {"bits": 4, "group_size": 64, **spec}
            known = found.setdefault(base, {}).setdefault(spec["name"], spec)
            if known != spec or spec["name"] == "4bit":
                raise WorkflowError(
                    f"config: runs.{run}.fidelity.quant_candidates: '{spec['name']}' "
                    + (
                        "is the bundle's own base (models/<base>-4bit-mlx); choose another name"
                        if spec["name"] == "4bit"
                        else f"means something else for another run on {base}; rename one"
                    )
                )
    return found


QUANT_CANDIDATES = _quant_candidates()


def quant_candidate_dirs(run):
    base = train_yaml.base_name(RUNS[run]["base_model"])
    return [
        f"models/{base}-{spec['name']}-mlx"
        for spec in RUNS[run]["fidelity"]["quant_candidates"]
    ]


def pod_config(run):
    return PODS[RUNS[run]["pod"]]


def local_model_input(base_model):
    """A base model as a file dependency when it is a local directory (maybe built by a rule)."""
    if train_yaml.is_local_model(base_model):
        return [os.path.normpath(os.path.expanduser(base_model))]
    return []


def base_model_input(run):
    return local_model_input(RUNS[run]["base_model"])


def deepspeed_input(run):
    """The DeepSpeed config the run's profile names (config/deepspeed/), as an input of
    submit_training: it travels with the run, so an edit of it trains again."""
    path = train_yaml.deepspeed_file(TRAIN_ARGS[run])
    return [str(path)] if path else []


def unquantised_base(run):
    """The run's base model unquantised, for the fidelity check, when it is a local folder no
    larger than fidelity.unquantised_max_gb (a hub id would be downloaded whole: never).
    """
    base = RUNS[run]["base_model"]
    limit = RUNS[run]["fidelity"]["unquantised_max_gb"]
    if not limit or not train_yaml.is_local_model(base):
        return []
    path = Path(os.path.normpath(os.path.expanduser(base)))
    size = (
        sum(p.stat().st_size for p in path.rglob("*.safetensors"))
        if path.is_dir()
        else 0
    )
    return [str(path)] if size <= limit * 1e9 else []


def base_4bit_dir(run):
    return f"models/{train_yaml.base_name(RUNS[run]['base_model'])}-4bit-mlx"


def mlx_bundle(run):
    """Everything `snakemake {run}_mlx` builds: the data stage, the adapter, the MLX bundle, and
    what `snakemake --report` shows of the run (report.smk)."""
    return [
        f"results/{run}/data/validation.json",
        f"results/{run}/llamafactory/dataset_info.json",
        f"results/{run}/llamafactory/train.yaml",
        f"lora_adapters/{run}_peft",
        f"lora_adapters/{run}_mlx/adapters.safetensors",
        f"lora_adapters/{run}_mlx/adapter_config.json",
        f"lora_adapters/{run}_mlx/metadata.json",
        f"results/{run}/fidelity/losses.json",
        f"lora_adapters/{run}_mlx/chat_template.jinja",
        base_4bit_dir(run),
        f"results/{run}/samples.md",
        # The report's items, as report.smk names them (this runs after every include).
        *expand(rules.loss_plot.output, run=run),
        *expand(rules.report_pages.output, run=run),
    ]


# What the plan says a training costs (lora_style/plan.py): a resource too, so a new price or
# rate reruns nothing; printed as submit_training's message, by `snakemake -n` as well.
def training_estimate(run):
    pod = {"name": RUNS[run]["pod"], **pod_config(run)}
    return plan.training_estimate(run, RUNS[run], TRAIN_ARGS[run], pod, Path.cwd())


def _planned(exclude_finished=True):
    """Snakemake's internals in one place (tested on the pinned Snakemake 9.27, test_cost.py):
    the (rule, run) of each job the plan runs, known only once the DAG is built."""
    return [
        (job.rule.name, job.wildcards.get("run"))
        for job in workflow.dag.needrun_jobs(exclude_finished=exclude_finished)
    ]


class PlanNote(str):
    """A run's line in the plan, worked out only when Snakemake prints it (its `run_mlx` job's
    message): a resource is evaluated while the DAG is built, before Snakemake knows which jobs
    will run, and by printing time it does."""

    def __format__(self, spec):
        run = str.__str__(self)
        planned = {name for name, of in _planned(exclude_finished=False) if of == run}
        fidelity = RUNS[run]["fidelity"]
        reference = (
            (
                lambda found: plan.reference_eval_note(
                    found, TRAIN_ARGS[run], fidelity["examples"]
                )
            )
            if fidelity["reference"] and TRAIN_ARGS[run].get("eval_dataset")
            else None
        )
        return plan.plan_line(run, planned, lambda: training_estimate(run), reference)


# The shipped config's pod address is a placeholder: a dry run still shows the plan (with a
# warning), a real run stops before its first job when that plan needs the pod.
for _name in plan.placeholder_pods(RUNS, PODS):
    print(
        f"warning: {plan.placeholder_advice(_name)}; a real run stops before anything is attempted",
        file=sys.stderr,
    )


def refuse_placeholder_pods():
    """onstart (real runs only): stop before any job when one would contact a placeholder pod."""
    error = plan.refused_placeholder(RUNS, PODS, _planned())
    if error:
        raise WorkflowError(error)
