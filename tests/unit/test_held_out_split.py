"""The graph owns the held-out set: validate.py splits by a hash of each normalised example
(data/validate.py held_out), and the training YAML names both sides instead of val_size."""

from __future__ import annotations

import json

import pytest
import yaml

from lora_style.config import train_yaml
from lora_style.data import dataset_info, validate

from helpers.workflow import REPO

DATA = REPO / "data" / "training" / "lovecraft" / "train_sft.jsonl"


def _split(tmp_path, name: str, lines: list[str], val_size: float = 0.25):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(lines), encoding="utf-8")
    train, held = tmp_path / f"{name}.train.jsonl", tmp_path / f"{name}.eval.jsonl"
    result, report = validate.validate_file(str(src), str(train), eval_output=str(held), val_size=val_size)
    assert result.ok, [p.message for p in result.problems]
    sides = {}
    for side, path in (("train", train), ("eval", held)):
        for line in path.read_text(encoding="utf-8").splitlines():
            sides[json.loads(line)["input"]] = side
    return sides, report


def test_the_split_is_stable_under_an_appended_line_and_a_one_line_edit(tmp_path):
    lines = DATA.read_text(encoding="utf-8").splitlines(keepends=True)
    before, report = _split(tmp_path, "before", lines)
    assert report["eval_examples"] > 0 and report["train_examples"] > 0
    assert report["train_examples"] + report["eval_examples"] == report["examples"] == len(lines)

    edited = list(lines)
    example = json.loads(edited[7])
    example["output"] += " And the sea was very old."
    edited[7] = json.dumps(example) + "\n"
    edited.append(json.dumps({"instruction": "Rewrite.", "input": "A new line.", "output": "It was."}) + "\n")
    after, _ = _split(tmp_path, "after", edited)

    edited_input = example["input"]
    moved = sorted(k for k, side in before.items() if k != edited_input and after[k] != side)
    assert moved == [], f"examples that moved between train and eval: {moved}"
    assert "A new line." in after


def test_the_split_follows_val_size_and_duplicates_stay_together(tmp_path):
    lines = DATA.read_text(encoding="utf-8").splitlines(keepends=True)
    none, report = _split(tmp_path, "none", lines, val_size=0.0)
    assert set(none.values()) == {"train"} and report["eval_examples"] == 0
    twice, report = _split(tmp_path, "twice", lines + lines, val_size=0.5)
    assert report["examples"] == 2 * len(lines)
    assert 0 < report["eval_examples"] < report["examples"]
    assert report["eval_examples"] % 2 == 0  # each duplicate on its twin's side


def test_too_few_examples_for_val_size_still_hold_out_one(tmp_path):
    """The shipped sample (40 examples) with the 32B profile's 0.05: the hash holds out none, so
    the example with the lowest hash is held out, and the report says why."""
    lines = DATA.read_text(encoding="utf-8").splitlines(keepends=True)
    sides, report = _split(tmp_path, "few", lines, val_size=1e-9)
    assert report["eval_examples"] == 1 == list(sides.values()).count("eval")
    assert report["train_examples"] == len(lines) - 1 and "fallback" in report["split"]


def test_the_training_yaml_names_both_sides_and_drops_val_size(tmp_path):
    args = train_yaml.train_args("demo", {"profile": "tiny_cpu", "base_model": "./models/tiny-qwen2"})
    assert args["val_size"] == 0.1  # the graph's split reads it
    out = tmp_path / "train.yaml"
    train_yaml.write_yaml(args, str(out))
    written = yaml.safe_load(out.read_text())
    assert "val_size" not in written
    assert (written["dataset"], written["eval_dataset"]) == ("demo_sft", "demo_eval")
    info = dataset_info.dataset_info("demo")
    assert info["demo_eval"]["file_name"] == "eval.jsonl" and info["demo_sft"]["file_name"] == "train.jsonl"


@pytest.mark.parametrize("value", [5, 1.0, -0.1, "0.1"])
def test_a_val_size_that_is_no_fraction_is_refused_naming_the_run(value):
    with pytest.raises(train_yaml.ConfigError, match=r"runs\.demo .*val_size.*fraction"):
        train_yaml.train_args(
            "demo",
            {"profile": "tiny_cpu", "base_model": "./m", "overrides": {"val_size": value}},
        )


def test_eval_dataset_is_the_pipelines_key():
    with pytest.raises(train_yaml.ConfigError, match="eval_dataset"):
        train_yaml.train_args(
            "demo", {"profile": "tiny_cpu", "base_model": "./m", "overrides": {"eval_dataset": "x"}}
        )
