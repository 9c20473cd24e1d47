# Shared helpers: config validation, wildcard constraints, and the get_* functions that map a
# run to its files and settings. Every path pattern of the graph is derived here or in the rule
# that writes it, once.

import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCRIPTS = Path(workflow.basedir) / "scripts"
# Rules call `python -m <script>`: the interpreter running Snakemake and scripts/ on the path.
# Script paths stay out of the rules' params and inputs, so moving the checkout or editing
# a script that does not change its outputs reruns nothing (the converter opts in, mlx.smk).
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")])),
)
sys.path.insert(0, str(SCRIPTS))
LOCAL_ENV = "../environment.yml"

import train_yaml  # noqa: E402  (scripts/ is on the path only from here)

try:
    validate(config, schema="../config/schema/config.schema.yaml")
except WorkflowError:
    # Same check, one line per problem instead of the whole schema.
    import yaml
    from config_errors import explain

    with open(Path(workflow.basedir) / "config" / "schema" / "config.schema.yaml") as _f:
        raise WorkflowError("\n".join(explain(config, yaml.safe_load(_f)))) from None

RUNS = config["runs"]
PODS = config["pods"]


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    base="[A-Za-z0-9_.-]+",


from train_yaml import base_name, is_local_model  # noqa: E402


def _check_config():
    """Cross-checks the schema cannot express, each naming the key to change."""
    args = {}
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
        # Inference must render prompts as training did: the run's LLaMA-Factory template.
        if not args[run].get("template"):
            raise WorkflowError(
                f"{where}: the training arguments have no 'template'; set it in the profile "
                "(e.g. template: qwen) so inference can render prompts as training saw them"
            )
    return args


# The complete LLaMA-Factory arguments of each run: profile + overrides + derived keys.
TRAIN_ARGS = _check_config()


def pod_config(run):
    return PODS[RUNS[run]["pod"]]


def local_model_input(base_model):
    """A base model as a file dependency when it is a local directory (maybe built by a rule)."""
    if is_local_model(base_model):
        return [os.path.normpath(os.path.expanduser(base_model))]
    return []


def base_model_input(run):
    return local_model_input(RUNS[run]["base_model"])


def base_4bit_dir(run):
    return f"models/{base_name(RUNS[run]['base_model'])}-4bit-mlx"


def mlx_bundle(run):
    """Everything `snakemake {run}_mlx` builds: the data stage, the adapter, the MLX bundle."""
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
    ]
