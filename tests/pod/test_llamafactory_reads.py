"""LLaMA-Factory's own code reads what we generate, in the pod environment.

A typo in a 7-hour configuration must fail on the laptop in seconds, not on the pod: these
tests pin our generated files, and our laptop-side key list, to LLaMA-Factory itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lora_style.config import train_yaml
from lora_style.data.dataset_info import DATA_FILE

from helpers.workflow import REPO, SAMPLE_DATA, run_pod_python, run_script

pytestmark = pytest.mark.pod
POD_CHECKS = REPO / "tests" / "pod_checks.py"


CUT = 48  # the cutoff_len of the held-out encoding check
PROFILES = sorted(p.name for p in (REPO / "config/hparams").glob("*.yaml"))


def pod_checks(tmp: Path, checks: list[tuple[str, str, object]]) -> dict:
    """Run [name, command, arg] checks in one pod-environment process (LLaMA-Factory imported once)."""
    spec = tmp / "checks.json"
    spec.write_text(
        json.dumps([[n, c, [str(x) for x in a] if isinstance(a, list) else str(a)] for n, c, a in checks])
    )
    proc = run_pod_python(POD_CHECKS, "batch", spec)
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


@pytest.fixture(scope="module")
def checked(tmp_path_factory, run_dir) -> dict:
    """Every check of this module, run by LLaMA-Factory in one pod-environment process."""
    tmp = tmp_path_factory.mktemp("checks")
    (tmp / "bad.yaml").write_text("lora_rnak: 8\n")
    # The run's YAML at a cutoff_len that cuts both parts of the held-out examples.
    cut = run_dir / f"cut{CUT}.yaml"
    train_yaml.write_yaml(
        {**yaml.safe_load((run_dir / "train.yaml").read_text()), "cutoff_len": CUT}, str(cut)
    )
    return {
        **pod_checks(
            tmp,
            [
                ("yaml", "parse-yaml", run_dir / "train.yaml"),
                ("dataset", "load-dataset", run_dir),
                ("cut", "eval-examples", cut),
                ("typo", "parse-profile", tmp / "bad.yaml"),
                ("keys", "facts", ["keys", "--output", tmp / "keys.txt"]),
                ("template", "facts", ["template", "qwen", "--output", tmp / "qwen.json"]),
                *[(profile, "parse-profile", written(tmp, profile)) for profile in PROFILES],
            ],
        ),
        "out": tmp,
    }


def written(tmp: Path, profile: str) -> Path:
    """A profile as the pipeline hands it to LLaMA-Factory: its keys, with its pipeline keys
    (early_stopping) turned into LLaMA-Factory's own, and the keys every run adds."""
    args = train_yaml.train_args("x", {"profile": Path(profile).stem, "base_model": "Qwen/Qwen2.5-32B"})
    path = tmp / profile
    train_yaml.write_yaml(args, str(path))
    return path


def value(checked: dict, name: str):
    result = checked[name]
    assert result["ok"], result["error"]
    return result["value"]


def test_tiny_cpu_yaml_is_accepted_by_get_train_args(checked, tiny_model):
    parsed = value(checked, "yaml")
    assert parsed["model"] == str(tiny_model)
    assert parsed["dataset"] == ["lovecraft_sft"] and parsed["dataset_dir"] == "data"
    assert parsed["eval_dataset"] == ["lovecraft_eval"] and parsed["val_size"] == 0.0
    assert parsed["template"] == "qwen" and parsed["finetuning_type"] == "lora"
    assert (parsed["max_steps"], parsed["lora_rank"], parsed["lora_alpha"]) == (10, 8, 32)
    assert parsed["cutoff_len"] == 512
    assert parsed["output_dir"] == "output"


def test_llamafactory_loader_finds_the_dataset_through_dataset_info(checked, sample_rows):
    loaded = value(checked, "dataset")
    # val_size 0.1 of 40 examples: the graph's split (by a hash of each example) holds out 4,
    # which LLaMA-Factory reads as eval_dataset.
    assert (loaded["train"], loaded["eval"]) == (36, 4)
    # The example is rendered in the qwen chat format: instruction + "\n" + input in the user
    # turn, under the default system prompt (not the guide's "instruction as system").
    assert "<|im_start|>system\nYou are Qwen" in loaded["first_text"]
    assert loaded["first_labels"].rstrip().endswith("<|im_end|>")
    assert any(row["output"] in loaded["first_labels"] for row in sample_rows)


def test_the_mac_side_encodes_the_held_out_examples_as_llamafactory_does(checked, run_dir, tiny_model):
    """mlx/fidelity.py's loss scores the same tokens LLaMA-Factory's evaluation scores: the same
    ids, the same masked prompt, truncated to cutoff_len the same way (48 cuts both parts; the
    untruncated case is the demo's, test_demo.py, where the two losses agree)."""
    from transformers import AutoTokenizer

    from lora_style.mlx import fidelity
    from lora_style.prompt_format import load_template

    theirs = value(checked, "cut")["examples"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    held_out = fidelity.read_examples(run_dir / "data" / "eval.jsonl", 64)
    ours = [fidelity.example_ids(tokenizer, ex, load_template("qwen"), CUT) for ex in held_out]
    assert len(ours) == len(theirs) > 0
    for (ids, prompt_len), row in zip(ours, theirs):
        assert (ids, prompt_len) == (row["input_ids"], row["prompt_len"])
        assert len(ids) <= CUT and prompt_len < len(ids)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_key_is_known_to_llamafactorys_parser(checked, profile):
    assert value(checked, profile)["keys"]


def test_a_typo_is_rejected_by_llamafactorys_parser_too(checked):
    """The same key our laptop-side check rejects is rejected by the real parser."""
    assert not checked["typo"]["ok"] and "lora_rnak" in checked["typo"]["error"]
    assert "lora_rnak" not in train_yaml.known_keys()


def test_shipped_key_list_matches_the_installed_llamafactory(checked):
    assert value(checked, "keys") == 0
    assert (checked["out"] / "keys.txt").read_text() == (
        REPO / "config" / "llamafactory_keys.txt"
    ).read_text(), (
        "regenerate: .venv-pod/bin/python scripts/llamafactory_facts.py keys "
        "--output config/llamafactory_keys.txt"
    )


def test_shipped_template_matches_the_installed_llamafactory(checked):
    assert value(checked, "template") == 0
    assert json.loads((checked["out"] / "qwen.json").read_text()) == json.loads(
        (REPO / "config" / "templates" / "qwen.json").read_text()
    )
