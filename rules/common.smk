# Shared helpers: config validation, wildcard constraints, and the get_* functions that map a
# run to its files and settings. Every path pattern of the graph is derived here or in the rule
# that writes it, once.

import importlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Resolved, as pod/executor.py resolves its own folder to strip it from a local training.
SCRIPTS = Path(workflow.basedir).resolve() / "scripts"


def _shell_escape(text):
    """Quoted for the shell, braces doubled: shell.prefix() goes through Snakemake's format()."""
    return shlex.quote(str(text)).replace("{", "{{").replace("}", "}}")


# What every job's shell gets, and only the jobs (Snakemake's own process keeps its environment):
#  - scripts/ first on PYTHONPATH and this Python's folder first on PATH, so a rule's plain
#    `python -m <script>` runs the script with the interpreter running Snakemake;
#  - `logged LOG COMMAND...` (scripts/logged.sh), how every rule logs, the output live on the
#    terminal and in the log, and the log's end again when the command fails. A shell function,
#    not a {LOGGED} path in every shell string, which `snakemake --lint` flags (a global in one).
# The prefix is no part of a rule's code as Snakemake hashes it (rule.shellcmd), so its absolute
# paths change no rule's code when the checkout moves, and editing a script reruns nothing (the
# converter opts in, mlx.smk). A job's processes inherit the two variables; a training started on
# this machine gets them taken out (pod/executor.py). `set -euo pipefail` is Snakemake's own
# default prefix, kept.
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={_shell_escape(SCRIPTS)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    f'export PATH={_shell_escape(Path(sys.executable).parent)}:"$PATH"; '
    f"logged() {{{{ sh {_shell_escape(SCRIPTS / 'logged.sh')} \"$@\"; }}}}; "
)


# For `--sdm conda`: environment.yml holds the local side's pins itself (no `-r` file, which a
# conda env built from a copy of it could not resolve); a test keeps them equal to
# requirements/local.txt. Without --sdm conda, Snakemake ignores it.
LOCAL_ENV = "../environment.yml"


def code_version(*modules):
    """A fingerprint of scripts' code: their syntax trees without docstrings, so a comment or a
    docstring changes nothing and any change to what the code does changes it. As a param, it
    reruns the rules that use it when, and only when, their code changes."""
    import ast
    import hashlib

    digest = hashlib.sha256()
    for module in modules:
        text = (SCRIPTS / f"{module}.py").read_text(encoding="utf-8")
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


def _script(name):
    """scripts/<name>.py, imported for the config checks below.

    scripts/ is on sys.path only while the module is imported: left there, a script named like
    an installed module (executor, fileio, generate, pod, ...) would shadow it for Snakemake
    and its plugins for the whole run. So what is called from here must not import another
    script lazily, inside a function.
    """
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


train_yaml = _script("train_yaml")
config_errors = _script("config_errors")
runpod_api = _script("pod.runpod_api")

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
# command line (--config relaunch=RUN[,RUN...]), for that call only (scripts/pod/follow.py).
RELAUNCH = set(filter(None, str(config.get("relaunch", "")).split(",")))
for _run in sorted(RELAUNCH - set(RUNS)):
    raise WorkflowError(
        f"config: relaunch: no run '{_run}' under runs: (known: {', '.join(RUNS)})"
    )


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    base="[A-Za-z0-9_.-]+",


def _check_config():
    """Cross-checks the schema cannot express, each naming the key to change.

    Returns each run's complete training arguments and the runs' base models by base name.
    """
    for name, pod in PODS.items():
        if pod.get("provider") == "runpod" and runpod_api.retired_v1(pod["api_url"]):
            raise WorkflowError(
                f"config: pods.{name}.api_url {pod['api_url']} {runpod_api.V1_GONE}"
            )
        # A budget in dollars needs a price: the rented pod's own, else gpu_hourly_usd.
        if (
            pod.get("max_usd")
            and not pod.get("provider")
            and pod.get("gpu_hourly_usd") is None
        ):
            raise WorkflowError(
                f"config: pods.{name}.max_usd needs pods.{name}.gpu_hourly_usd (the price of a "
                "GPU-hour) to turn dollars into training time; set it, or use max_hours"
            )
    args = {}
    base_models = {}  # base name -> the runs' base_model
    for run, cfg in RUNS.items():
        where = f"config: runs.{run}"
        if cfg["pod"] not in PODS:
            raise WorkflowError(
                f"{where}.pod: no pod '{cfg['pod']}' under pods: (known: {', '.join(PODS)})"
            )
        try:
            args[run] = train_yaml.train_args(run, cfg)
        except train_yaml.ConfigError as exc:
            raise WorkflowError(str(exc)) from None
        # These reach the jobs' command lines (validate_dataset, metadata): whole numbers only.
        for key in ("cutoff_len", "lora_rank", "lora_alpha"):
            value = args[run].get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise WorkflowError(
                    f"{where}.overrides.{key}: {value!r} is not a whole number; set it in "
                    f"runs.{run}.overrides (or the profile), e.g. {key}: 64"
                )
        # Inference must render prompts as training did: the run's LLaMA-Factory template.
        if not args[run].get("template"):
            raise WorkflowError(
                f"{where}: the training arguments have no 'template'; set it in the profile "
                "(e.g. template: qwen) so inference can render prompts as training saw them"
            )
        # One 4-bit base per base name (models.smk): two different models may not share it.
        base = cfg["base_model"]
        name = train_yaml.base_name(base)
        # The name becomes a path of the graph, models/{name}-4bit-mlx (the `base` wildcard).
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise WorkflowError(
                f"{where}.base_model: its folder name '{name}' names models/{name}-4bit-mlx, "
                "which may only use letters, digits, '.', '_' and '-'; rename the folder"
            )
        if base_models.setdefault(name, base) != base:
            raise WorkflowError(
                f"{where}.base_model '{base}' and '{base_models[name]}' would share "
                f"models/{name}-4bit-mlx; rename one of the local model directories"
            )
    return args, base_models


# The complete LLaMA-Factory arguments of each run (profile + overrides + derived keys, with
# LLaMA-Factory's defaults filled in), and the base models the runs share (models.smk).
TRAIN_ARGS, BASE_MODELS = _check_config()


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
        base_4bit_dir(run),
        f"results/{run}/samples.md",
        # The report's items, as report.smk names them (this runs after every include).
        *expand(rules.loss_plot.output, run=run),
        *expand(rules.report_pages.output, run=run),
    ]


# What the plan says a training costs (scripts/pod/cost.py): a resource too, so a new price or
# rate reruns nothing; printed as submit_training's message, by `snakemake -n` as well.
cost = _script("pod.cost")
runpod_catalog = _script("pod.runpod_catalog")
fileio = _script("fileio")


def training_estimate(run):
    args = TRAIN_ARGS[run]
    examples = None
    if (
        int(args.get("max_steps") or -1) <= 0
    ):  # epochs: the data's examples decide the steps
        try:
            examples = fileio.count_lines(RUNS[run]["data"])
        except OSError:
            examples = 0  # validate_dataset names the missing file
    pod = {"name": RUNS[run]["pod"], **pod_config(run)}
    # A rented pod: RunPod's list price from the last catalog read (.state/runpod/catalog.json),
    # never a request (a dry run opens no connection).
    listed = (
        runpod_catalog.list_price(Path.cwd(), pod.get("gpu_type"), pod["cloud_type"])
        if pod.get("provider") == "runpod"
        else None
    )
    return cost.estimate(run, args, RUNS[run]["profile"], pod, examples, listed)


class PlanNote(str):
    """A run's line in the plan, worked out only when Snakemake prints it (its `run_mlx` job's
    message): a resource is evaluated while the DAG is built, before Snakemake knows which jobs
    will run, and by printing time it does. Reads workflow.dag.needrun_jobs() of the pinned
    Snakemake (tests/test_cost.py checks it)."""

    def __format__(self, spec):
        run = str.__str__(self)
        planned = {
            job.rule.name
            for job in workflow.dag.needrun_jobs(exclude_finished=False)
            if job.wildcards.get("run") == run
        }
        if planned & {"submit_training", "wait_training"}:
            return f"{run}_mlx: trains in this plan ({training_estimate(run).line()})"
        if "best_checkpoint" in planned:
            return f"{run}_mlx: no training in this plan, only the download of a finished one"
        return f"{run}_mlx: nothing to train in this plan: no GPU time"


# The shipped config's pod address is a placeholder: a dry run still shows the plan (with a
# warning), a real run stops before its first job when that plan needs the pod.
POD_PLACEHOLDER = "POD_IP"
POD_RULES = {"preflight", "submit_training", "wait_training", "best_checkpoint"}


def _placeholder_pods():
    return sorted(
        {
            cfg["pod"]
            for cfg in RUNS.values()
            if PODS[cfg["pod"]].get("host") == POD_PLACEHOLDER
            and not PODS[cfg["pod"]].get("provider")
        }
    )


def _placeholder_advice(name):
    return (
        f"pods.{name}.host is the placeholder {POD_PLACEHOLDER}: replace it with your pod's address "
        "(RunPod: Connect -> 'SSH over exposed TCP' shows `ssh root@<IP> -p <PORT>`; set host "
        "and port), or rent one from the graph with provider: runpod"
    )


for _name in _placeholder_pods():
    print(
        f"warning: {_placeholder_advice(_name)}; a real run stops before anything is attempted",
        file=sys.stderr,
    )


def refuse_placeholder_pods():
    """onstart (real runs only): stop before any job when one would contact a placeholder pod."""
    needed = {
        RUNS[job.wildcards.run]["pod"]
        for job in workflow.dag.needrun_jobs()
        if job.rule.name in POD_RULES
    }
    for name in _placeholder_pods():
        if name in needed:
            raise WorkflowError(
                f"config: {_placeholder_advice(name)}. Nothing was run."
            )
