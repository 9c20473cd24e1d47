"""Build the LLaMA-Factory training YAML of a run: profile + overrides + the run's own keys.

    python scripts/train_yaml.py --args '{"lora_rank": 64, ...}' --output train.yaml

Snakemake computes the arguments with ``train_args()`` (so they are the rule's params and a
change to any hyper-parameter reruns exactly what depends on it) and this CLI writes them.
The run's own keys are derived, never typed: ``dataset`` is the name ``dataset_info.json``
declares, ``dataset_dir``/``output_dir`` are relative to the run's folder on the pod (training
starts there), and ``model_name_or_path`` is the run's ``base_model``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from pathlib import Path

import yaml

from lora_style.fileio import write_atomic
from lora_style.paths import CONFIG

PROFILES_DIR = CONFIG / "hparams"
KEYS_FILE = CONFIG / "llamafactory_keys.txt"
DEEPSPEED_DIR = CONFIG / "deepspeed"

# Relative to the run's folder on the pod, where training is started.
DATASET_DIR = "data"
OUTPUT_DIR = "output"
RUN_DEEPSPEED_DIR = "deepspeed"  # the run folder's copy of the profile's DeepSpeed config
RUN_KEYS = ("model_name_or_path", "dataset", "eval_dataset", "dataset_dir", "output_dir")
RUN_KEY_SOURCE = {
    "model_name_or_path": "the run's base_model",
    "dataset": "the run's name",
    "eval_dataset": "the run's name (the held-out side of the graph's split, val_size)",
    "dataset_dir": "the pipeline",
    "output_dir": "the pipeline",
}


# LLaMA-Factory's own defaults (0.9.5, hparams/data_args.py and finetuning_args.py) for the keys
# this pipeline reads besides LLaMA-Factory: validation counts examples over cutoff_len, the
# metadata and the pod estimate use the rank. lora_alpha's default follows the rank (below).
LLAMAFACTORY_DEFAULTS = {"cutoff_len": 2048, "lora_rank": 8}


# Keys a profile may hold that are the pipeline's, not LLaMA-Factory's: early_stopping becomes
# LLaMA-Factory's own keys (early_stopping_args).
PROFILE_PIPELINE_KEYS = ("early_stopping",)


class ConfigError(ValueError):
    """A configuration mistake, with the file and the fix in its message."""


def dataset_name(run: str) -> str:
    return f"{run}_sft"


def eval_dataset_name(run: str) -> str:
    return f"{run}_eval"


def held_out_fraction(args: dict, where: str = "val_size") -> float:
    """The profile's val_size as the fraction of examples the graph holds out (data/validate.py
    splits by a hash of each example, so an edit never moves another example across). A count
    (LLaMA-Factory also takes val_size >= 1) cannot be kept stable under appends: refused."""
    value = args.get("val_size") or 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(
            f"{where}: val_size: {value!r} must be a fraction in [0, 1) (0.05 holds out about 5% "
            "of the examples); the graph splits by a hash of each example, never by a count"
        )
    return float(value)


def yaml_args(args: dict) -> dict:
    """What LLaMA-Factory sees: the arguments without val_size, since the graph has split the
    data itself (eval_dataset names the held-out side; LLaMA-Factory refuses both)."""
    return {key: value for key, value in args.items() if key != "val_size"}


def known_keys(path: Path = KEYS_FILE) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def check_keys(args: dict, where: str, keys: set[str] | None = None) -> None:
    keys = keys if keys is not None else known_keys()
    for key in args:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see LLaMA-Factory's hparams"
            raise ConfigError(f"{where}: '{key}' is not a LLaMA-Factory training key; {hint}")


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR, where: str = "profile") -> dict:
    """A profile's LLaMA-Factory keys (its pipeline keys, such as early_stopping: read_profile)."""
    return read_profile(name, profiles_dir, where)[0]


def read_profile(name: str, profiles_dir: Path = PROFILES_DIR, where: str = "profile") -> tuple[dict, dict]:
    """A profile as (its LLaMA-Factory keys, its pipeline keys: PROFILE_PIPELINE_KEYS)."""
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(profiles_dir).glob("*.yaml")))
        raise ConfigError(f"{where}: profile '{name}' has no file {path}; known profiles: {known}")
    profile = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(profile, dict):
        raise ConfigError(f"{path}: a profile is a mapping of LLaMA-Factory keys to values")
    for key in RUN_KEYS:
        if key in profile:
            raise ConfigError(
                f"{path}: '{key}' is set per run from {RUN_KEY_SOURCE[key]}; delete it from the profile"
            )
    ours = {key: profile.pop(key) for key in PROFILE_PIPELINE_KEYS if key in profile}
    check_keys(profile, str(path))
    return profile, ours


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_local_model(base_model: str) -> bool:
    """A local directory is written as a path (./, ../, / or ~); anything else is a hub id."""
    return base_model.startswith(("/", "./", "../", "~"))


def base_name(base_model: str) -> str:
    """Qwen/Qwen2.5-32B -> Qwen2.5-32B; ./models/tiny-qwen2 -> tiny-qwen2."""
    return Path(os.path.expanduser(base_model.rstrip("/"))).name


def base_model_path(base_model: str, where: str = "base_model") -> str:
    """A local directory becomes absolute (training starts in another folder); a hub id stays."""
    if is_local_model(base_model):
        return os.path.abspath(os.path.expanduser(base_model))
    if not HUB_ID.match(base_model):
        raise ConfigError(
            f"{where}: '{base_model}' is neither a hub id (org/name) nor a local "
            "directory; write a local directory as ./path or /path"
        )
    return base_model


def with_llamafactory_defaults(args: dict) -> dict:
    """The arguments with LLaMA-Factory's defaults filled in where they are left out.

    A null counts as left out (an override can unset a profile's value); lora_alpha is filled
    as LLaMA-Factory does it (``self.lora_alpha or self.lora_rank * 2``). Keys that are set
    keep their place and value.
    """
    args = dict(args)
    for key, value in LLAMAFACTORY_DEFAULTS.items():
        if args.get(key) is None:
            args[key] = value
    if not args.get("lora_alpha"):
        args["lora_alpha"] = 2 * args["lora_rank"]
    return args


DEEPSPEED_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def resolve_deepspeed(args: dict, where: str, deepspeed_dir: Path | None = None) -> dict:
    """`deepspeed: ds_z3` (a name of config/deepspeed/) becomes the run folder's path of that
    file, `deepspeed/ds_z3.json`: training starts in the run folder, and the file travels with the
    run (training/launch.py), so a rerun of the folder trains with the same config. A null
    (an override unsetting the profile's) removes the key."""
    deepspeed_dir = Path(deepspeed_dir or DEEPSPEED_DIR)
    name = args.get("deepspeed")
    if name is None:
        return {key: value for key, value in args.items() if key != "deepspeed"}
    known = ", ".join(sorted(p.stem for p in deepspeed_dir.glob("*.json"))) or "none"
    if not isinstance(name, str) or not DEEPSPEED_NAME.match(name):
        raise ConfigError(
            f"{where}: deepspeed: {name!r} is not the name of a DeepSpeed config; "
            f"write one of config/deepspeed/ without .json ({known})"
        )
    if not (deepspeed_dir / f"{name}.json").is_file():
        raise ConfigError(
            f"{where}: deepspeed: '{name}' has no file {deepspeed_dir / name}.json; "
            f"known: {known} (or add your JSON there)"
        )
    return {**args, "deepspeed": f"{RUN_DEEPSPEED_DIR}/{name}.json"}  # keeps the key's place


def deepspeed_file(args: dict, deepspeed_dir: Path | None = None) -> Path | None:
    """The local file behind a train.yaml's `deepspeed: deepspeed/NAME.json`, or None."""
    value = args.get("deepspeed")
    if not value:
        return None
    return Path(deepspeed_dir or DEEPSPEED_DIR) / Path(str(value)).name


def early_stopping_args(args: dict, spec, where: str) -> dict:
    """`early_stopping: {patience: N, min_delta: 0}` as LLaMA-Factory's own keys.

    LLaMA-Factory 0.9.5 adds transformers' EarlyStoppingCallback when `early_stopping_steps` is
    set (train/tuner.py); the callback counts evaluations without a better `eval_loss` and needs
    `metric_for_best_model` and the best-model bookkeeping of `load_best_model_at_end`, which
    transformers allows only with a save strategy equal to the evaluation strategy and
    `save_steps` a multiple of `eval_steps`. The callback's count is saved in every checkpoint's
    trainer_state.json (stateful_callbacks) but restored on a resume only with
    `restore_callback_states_from_checkpoint` (transformers' default: false, which would start
    the count again at 0 after a crash and stop later than an uninterrupted run).
    `spec` None or false: no early stopping (then `early_stopping_steps` may not be set either).
    """
    if spec is None or spec is False:
        if args.get("early_stopping_steps") is not None:
            raise ConfigError(
                f"{where}: early_stopping_steps is set; write early_stopping: {{patience: "
                f"{args['early_stopping_steps']}}} in the run (or the profile) instead, which also "
                "sets the keys it needs and keeps its count through a resume"
            )
        return args
    if not isinstance(spec, dict) or set(spec) - {"patience", "min_delta"}:
        raise ConfigError(
            f"{where}: early_stopping: {spec!r} is not {{patience: N, min_delta: 0}}; e.g. "
            "early_stopping: {patience: 2}, or early_stopping: false for none"
        )
    patience = spec.get("patience")
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise ConfigError(
            f"{where}: early_stopping.patience: {patience!r} is not a whole number of evaluations "
            "(1 or more); e.g. patience: 2"
        )
    min_delta = spec.get("min_delta", 0)
    if min_delta not in (0, 0.0) or isinstance(min_delta, bool):
        # LLaMA-Factory builds the callback with the patience alone (threshold 0.0).
        raise ConfigError(
            f"{where}: early_stopping.min_delta: {min_delta!r}: LLaMA-Factory 0.9.5 passes no "
            "threshold to its EarlyStoppingCallback (train/tuner.py), so any lower eval_loss "
            "counts as better; set min_delta: 0 (or leave it out)"
        )
    strategy = args.get("eval_strategy")
    if strategy not in ("steps", "epoch"):
        raise ConfigError(
            f"{where}: early_stopping needs evaluations, but eval_strategy is {strategy!r}; set "
            "eval_strategy: steps and eval_steps (and an evaluation set: val_size)"
        )
    if strategy == "steps":
        every, save = args.get("eval_steps"), args.get("save_steps")
        if not every or not save or save % every:
            raise ConfigError(
                f"{where}: early_stopping needs save_steps a multiple of eval_steps (transformers' "
                f"rule for load_best_model_at_end), not save_steps {save!r} and eval_steps "
                f"{every!r}; set both, e.g. save_steps: {every or 100} and eval_steps: {every or 100}"
            )
    if args.get("save_strategy", strategy) != strategy:
        raise ConfigError(
            f"{where}: early_stopping needs save_strategy equal to eval_strategy ({strategy}), not "
            f"{args['save_strategy']!r}; remove save_strategy"
        )
    if args.get("metric_for_best_model", "eval_loss") not in ("eval_loss", "loss"):
        raise ConfigError(
            f"{where}: early_stopping watches eval_loss, the metric the best checkpoint is chosen "
            f"by; remove metric_for_best_model ({args['metric_for_best_model']!r})"
        )
    return {
        **args,
        "early_stopping_steps": patience,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "save_strategy": strategy,
        "restore_callback_states_from_checkpoint": True,
    }


def train_args(run: str, run_config: dict, profiles_dir: Path = PROFILES_DIR) -> dict:
    """The complete training arguments of one run, in the guide's key order.

    Every key another stage reads is there: LLaMA-Factory's defaults fill what the profile
    and the overrides leave out (``with_llamafactory_defaults``), so no one else repeats them.
    """
    profile, ours = read_profile(run_config["profile"], profiles_dir, f"config: runs.{run}.profile")
    args = dict(profile)
    overrides = run_config.get("overrides") or {}
    where = f"config: runs.{run}.overrides"
    for key in RUN_KEYS:
        if key in overrides:
            raise ConfigError(f"{where}: '{key}' is set from {RUN_KEY_SOURCE[key]}; remove it from overrides")
    check_keys(overrides, where)
    args.update(overrides)
    args = with_llamafactory_defaults(args)
    # The run's early_stopping wins over the profile's (false: none).
    if "early_stopping" in run_config:
        stopping, said = run_config["early_stopping"], f"config: runs.{run}"
    else:
        said = f"config: runs.{run} (profile {Path(profiles_dir) / run_config['profile']}.yaml)"
        stopping = ours.get("early_stopping")
    args = early_stopping_args(args, stopping, said)
    where = f"config: runs.{run} (profile {run_config['profile']} + overrides)"
    args = resolve_deepspeed(args, where)
    held_out = held_out_fraction(args, where)
    if args.get("early_stopping_steps") and not held_out:
        raise ConfigError(
            f"{said}: early_stopping watches the held-out examples' eval_loss, but val_size is 0 "
            "(none held out); set val_size (e.g. 0.05) or early_stopping: false"
        )
    return {
        "model_name_or_path": base_model_path(run_config["base_model"], f"config: runs.{run}.base_model"),
        **args,
        "dataset": dataset_name(run),
        **({"eval_dataset": eval_dataset_name(run)} if held_out else {}),
        "dataset_dir": DATASET_DIR,
        "output_dir": OUTPUT_DIR,
    }


def write_yaml(args: dict, output: str) -> None:
    text = "# Generated by scripts/train_yaml.py from config/; edit the config, not this file.\n"
    text += yaml.safe_dump(yaml_args(args), sort_keys=False, allow_unicode=True)
    write_atomic(output, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--args", help="the complete arguments as JSON (what Snakemake passes)")
    group.add_argument("--run", help="a run of --config, to build the arguments here")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--output", required=True)
    ns = parser.parse_args(argv)
    try:
        if ns.args:
            args = json.loads(ns.args)
            check_keys(args, "--args")
        else:
            config = yaml.safe_load(Path(ns.config).read_text(encoding="utf-8"))
            if ns.run not in config.get("runs", {}):
                raise ConfigError(f"{ns.config}: no run '{ns.run}' under runs:")
            args = train_args(ns.run, config["runs"][ns.run])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_yaml(args, ns.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
