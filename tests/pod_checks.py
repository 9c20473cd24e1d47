"""Checks that run inside the pod environment (LLaMA-Factory installed); called by the tests.

    .venv-pod/bin/python tests/pod_checks.py load-dataset RUN_DIR
    .venv-pod/bin/python tests/pod_checks.py parse-yaml RUN_DIR/train.yaml
    .venv-pod/bin/python tests/pod_checks.py parse-profile PROFILE.yaml
    .venv-pod/bin/python tests/pod_checks.py batch CHECKS.json

Each prints one JSON object with what LLaMA-Factory made of our files. `batch` runs a list of
[name, command, arg] in one process (LLaMA-Factory imported once, not once a check) and prints
{name: {"ok": true, "value": ...} or {"ok": false, "error": "..."}}; its commands include
`facts` (scripts/llamafactory_facts.py's command line, its arguments a list).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import yaml


def parse_yaml(path: str) -> dict:
    """get_train_args on the generated YAML, in the run folder (as the executor starts it)."""
    from llamafactory.hparams import get_train_args

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(yaml.safe_load(open(path)))
    return {
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset,
        "eval_dataset": data_args.eval_dataset,
        "val_size": data_args.val_size,
        "dataset_dir": data_args.dataset_dir,
        "template": data_args.template,
        "cutoff_len": data_args.cutoff_len,
        "max_steps": training_args.max_steps,
        "output_dir": training_args.output_dir,
        "lora_rank": finetuning_args.lora_rank,
        "lora_alpha": finetuning_args.lora_alpha,
        "finetuning_type": finetuning_args.finetuning_type,
    }


def load_dataset(run_dir: str) -> dict:
    """LLaMA-Factory's own loader: dataset_info.json -> train.jsonl -> tokenised examples."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    os.chdir(run_dir)
    model_args, data_args, training_args, _, _ = get_train_args(yaml.safe_load(open("train.yaml")))
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    train, evaluation = module["train_dataset"], module.get("eval_dataset")
    first = train[0]
    return {
        "train": len(train),
        "eval": len(evaluation) if evaluation is not None else 0,
        "first_text": tokenizer.decode(first["input_ids"]),
        "first_labels": tokenizer.decode([t for t in first["labels"] if t != -100]),
    }


def parse_profile(path: str) -> dict:
    """The parser's own unknown-key check on a profile (no GPU-dependent validation)."""
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    args = yaml.safe_load(open(path))
    # The per-run keys the pipeline adds (nothing is downloaded: parsing only), and use_cpu so
    # transformers' hardware check (bf16 needs a GPU) does not stop a parse on this machine.
    run_keys = {
        "model_name_or_path": "Qwen/Qwen2.5-32B",
        "dataset": "x_sft",
        "dataset_dir": "data",
        "output_dir": "output",
        "use_cpu": True,
    }
    # `deepspeed` makes transformers import DeepSpeed while parsing, and DeepSpeed needs CUDA to
    # install: here it is checked as a name the parser knows, then left out of the parse.
    fields = {f.name for cls in _TRAIN_ARGS for f in dataclasses.fields(cls)}
    unknown = [key for key in ("deepspeed",) if key in args and key not in fields]
    if unknown:
        raise SystemExit(f"unknown keys: {unknown}")
    parsed = {k: v for k, v in args.items() if k != "deepspeed"}
    HfArgumentParser(_TRAIN_ARGS).parse_dict({**parsed, **run_keys}, allow_extra_keys=False)
    return {"keys": sorted(args)}


def eval_examples(yaml_path: str) -> dict:
    """The held-out examples as LLaMA-Factory's supervised processor encodes them for
    evaluation (eval_dataset): token ids and how many leading labels are masked (the prompt)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    path = Path(yaml_path).resolve()
    os.chdir(path.parent)
    model_args, data_args, training_args, _, _ = get_train_args(yaml.safe_load(open(path)))
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    examples = []
    for row in module["eval_dataset"]:
        labels = row["labels"]
        masked = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        assert labels[masked:] == row["input_ids"][masked:], "labels are the response's ids"
        examples.append({"input_ids": row["input_ids"], "prompt_len": masked})
    return {"examples": examples}


def facts(argv: list[str]) -> int:
    """scripts/llamafactory_facts.py's command line, run here."""
    from lora_style.config import llamafactory_facts

    return llamafactory_facts.main([str(a) for a in argv])


COMMANDS = {
    "parse-yaml": parse_yaml,
    "load-dataset": load_dataset,
    "parse-profile": parse_profile,
    "facts": facts,
    "eval-examples": eval_examples,
}


def batch(path: str) -> dict:
    results = {}
    for name, command, arg in json.load(open(path)):
        here = os.getcwd()
        try:
            results[name] = {"ok": True, "value": COMMANDS[command](arg)}
        except BaseException as exc:  # SystemExit too: a refused profile is a result
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            os.chdir(here)
    return results


if __name__ == "__main__":
    command, arg = sys.argv[1], sys.argv[2]
    result = {**COMMANDS, "batch": batch}[command](arg)
    print("RESULT " + json.dumps(result))
