"""LLaMA-Factory's own code reads what we generate, in the pod environment.

A typo in a 7-hour configuration must fail on the laptop in seconds, not on the pod: these
tests pin our generated files, and our laptop-side key list, to LLaMA-Factory itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_style.config import train_yaml
from lora_style.data.dataset_info import DATA_FILE

from helpers.workflow import REPO, SAMPLE_DATA, run_pod_python, run_script

pytestmark = pytest.mark.pod
POD_CHECKS = REPO / "tests" / "pod_checks.py"


def pod_check(command: str, arg) -> dict:
    proc = run_pod_python(POD_CHECKS, command, arg)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model) -> Path:
    """The run folder exactly as the executor lays it out on the pod."""
    run = tmp_path_factory.mktemp("pod") / "lovecraft"
    data = run / train_yaml.DATASET_DIR
    data.mkdir(parents=True)
    proc = run_script(
        "validate_dataset.py",
        SAMPLE_DATA,
        "--output",
        data / DATA_FILE,
        "--eval-output",
        data / "eval.jsonl",
        "--val-size",
        "0.1",
        "--report",
        run / "validation.json",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        run_script("dataset_info.py", "--run", "lovecraft", "--output", data / "dataset_info.json").returncode
        == 0
    )
    args = train_yaml.train_args("lovecraft", {"profile": "tiny_cpu", "base_model": str(tiny_model)})
    train_yaml.write_yaml(args, str(run / "train.yaml"))
    return run


def test_tiny_cpu_yaml_is_accepted_by_get_train_args(run_dir, tiny_model):
    parsed = pod_check("parse-yaml", run_dir / "train.yaml")
    assert parsed["model"] == str(tiny_model)
    assert parsed["dataset"] == ["lovecraft_sft"] and parsed["dataset_dir"] == "data"
    assert parsed["eval_dataset"] == ["lovecraft_eval"] and parsed["val_size"] == 0.0
    assert parsed["template"] == "qwen" and parsed["finetuning_type"] == "lora"
    assert (parsed["max_steps"], parsed["lora_rank"], parsed["lora_alpha"]) == (10, 8, 32)
    assert parsed["cutoff_len"] == 512
    assert parsed["output_dir"] == "output"


def test_llamafactory_loader_finds_the_dataset_through_dataset_info(run_dir, sample_rows):
    loaded = pod_check("load-dataset", run_dir)
    # val_size 0.1 of 40 examples: the graph's split (by a hash of each example) holds out 4,
    # which LLaMA-Factory reads as eval_dataset.
    assert (loaded["train"], loaded["eval"]) == (36, 4)
    # The example is rendered in the qwen chat format: instruction + "\n" + input in the user
    # turn, under the default system prompt (not the guide's "instruction as system").
    assert "<|im_start|>system\nYou are Qwen" in loaded["first_text"]
    assert loaded["first_labels"].rstrip().endswith("<|im_end|>")
    assert any(row["output"] in loaded["first_labels"] for row in sample_rows)


def test_the_mac_side_encodes_the_held_out_examples_as_llamafactory_does(run_dir, tiny_model):
    """mlx/fidelity.py's loss scores the same tokens LLaMA-Factory's evaluation scores: the same
    ids, the same masked prompt, truncated to cutoff_len the same way (48 cuts both parts; the
    untruncated case is the demo's, test_demo_fidelity.py, where the two losses agree)."""
    cutoff_len = 48
    from transformers import AutoTokenizer

    from lora_style.mlx import fidelity
    from lora_style.prompt_format import load_template

    args = train_yaml.train_args("lovecraft", {"profile": "tiny_cpu", "base_model": str(tiny_model)})
    train_yaml.write_yaml({**args, "cutoff_len": cutoff_len}, str(run_dir / f"cut{cutoff_len}.yaml"))
    theirs = pod_check("eval-examples", run_dir / f"cut{cutoff_len}.yaml")["examples"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    held_out = fidelity.read_examples(run_dir / "data" / "eval.jsonl", 64)
    ours = [fidelity.example_ids(tokenizer, ex, load_template("qwen"), cutoff_len) for ex in held_out]
    assert len(ours) == len(theirs) > 0
    for (ids, prompt_len), row in zip(ours, theirs):
        assert (ids, prompt_len) == (row["input_ids"], row["prompt_len"])
        assert len(ids) <= cutoff_len and prompt_len < len(ids)


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "config/hparams").glob("*.yaml")))
def test_every_profile_key_is_known_to_llamafactorys_parser(profile):
    parsed = pod_check("parse-profile", REPO / "config" / "hparams" / profile)
    assert parsed["keys"]


def test_a_typo_is_rejected_by_llamafactorys_parser_too(tmp_path):
    """The same key our laptop-side check rejects is rejected by the real parser."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rnak: 8\n")
    proc = run_pod_python(POD_CHECKS, "parse-profile", bad, check=False)
    assert proc.returncode != 0 and "lora_rnak" in proc.stderr
    assert "lora_rnak" not in train_yaml.known_keys()


def test_shipped_key_list_matches_the_installed_llamafactory(tmp_path):
    out = tmp_path / "keys.txt"
    run_pod_python(REPO / "scripts" / "llamafactory_facts.py", "keys", "--output", out)
    assert out.read_text() == (REPO / "config" / "llamafactory_keys.txt").read_text(), (
        "regenerate: .venv-pod/bin/python scripts/llamafactory_facts.py keys "
        "--output config/llamafactory_keys.txt"
    )


def test_shipped_template_matches_the_installed_llamafactory(tmp_path):
    out = tmp_path / "qwen.json"
    run_pod_python(REPO / "scripts" / "llamafactory_facts.py", "template", "qwen", "--output", out)
    assert json.loads(out.read_text()) == json.loads(
        (REPO / "config" / "templates" / "qwen.json").read_text()
    )
