"""Configuration: the schema, the profiles, and the files generated from them (guide steps 3-4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lora_style.config import errors as config_errors
from lora_style.config import train_yaml
from lora_style.data.dataset_info import dataset_info

from helpers.workflow import REPO, SAMPLE_DATA, run_script, snakemake, write_config

GUIDE_YAML = REPO / "tests" / "fixtures" / "guide_qwen25_32b_lora.yaml"
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def dry_run(tmp_path: Path, overlay: dict, *targets: str):
    over = write_config(tmp_path / "overlay.yaml", overlay)
    return snakemake(tmp_path, "-n", *targets, configfile=over, check=False)


def output(proc) -> str:
    return proc.stdout + proc.stderr


def first_error(proc) -> str:
    lines = [line for line in output(proc).splitlines() if line.startswith("config")]
    assert proc.returncode != 0
    assert lines, output(proc)
    return lines[0]


# --- the schema, checked when the workflow starts ------------------------------------------


def test_the_workflow_refuses_a_bad_config_in_one_line_per_problem_before_any_job(tmp_path):
    """The in-process cases (tests/unit/test_config_messages.py) as `snakemake -n` says them: two
    schema problems at once, each a line; then a cross-check's line."""
    proc = dry_run(
        tmp_path,
        {"runs": {"lovecraft": {"learning_rate": 1e-4}}, "pods": {"runpod": {"on_finish": "pause"}}},
    )
    said = [line for line in output(proc).splitlines() if line.startswith("config")]
    assert proc.returncode != 0
    assert any("config: runs.lovecraft: unknown key 'learning_rate'" in line for line in said), output(proc)
    assert any("'pause' is not one of stop, terminate, keep" in line for line in said), output(proc)
    assert "Failed validating" not in output(proc), "one line per problem, not the schema dump"
    proc = dry_run(tmp_path, {"runs": {"lovecraft": {"pod": "nowhere"}}})
    assert "runs.lovecraft.pod: no pod 'nowhere'" in first_error(proc)
    assert not (tmp_path / "results").exists()


def test_every_pattern_in_the_schema_is_explained_in_words():
    """A refused value is told what it may hold, not shown a regex: each `pattern:` has its words
    in config_errors, and those words are what a violation prints."""
    import jsonschema

    schema = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            found.update([node["pattern"]] if isinstance(node.get("pattern"), str) else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found and found == set(config_errors._PATTERNS)
    # And each is used: a value its pattern refuses is explained in those words, not the regex.
    for pattern, says in config_errors._PATTERNS.items():
        error = next(jsonschema.Draft202012Validator({"pattern": pattern}).iter_errors('-\n"%'))
        line = config_errors._line(error)
        assert says in line and pattern not in line, line


def test_dry_run_on_the_default_config_lists_the_plan_and_touches_no_pod(tmp_path, tripwire):
    """A fresh clone, the default config, a placeholder pod: `snakemake -n lovecraft_mlx` works."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("Snakefile", "rules", "src", "scripts", "config", "data"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, clone / part)
    env, calls = tripwire
    proc = snakemake(clone, "-n", "lovecraft_mlx", snakefile=clone / "Snakefile", env=env)
    assert "validate_dataset" in proc.stdout and "train_yaml" in proc.stdout
    assert DEFAULT_CONFIG["pods"]["runpod"]["host"] == "POD_IP"  # the placeholder is kept
    assert not (clone / "results").exists(), "a dry run writes nothing"
    assert not calls.exists(), f"a dry run called {calls.read_text()}"
    # The cost of the plan's training, at a glance (the guide's rate and price, 600 steps).
    out = proc.stdout + proc.stderr
    line = (
        "lovecraft: up to 600 steps, ~7.1 GPU-hours on 1 x A100-SXM4-80GB at $1.89/h = ~$13.50 at most "
        "(stops early when eval_loss has not improved for 2 evaluations; 84 steps/h from config/rates.yaml)"
    )
    assert f": {line}" in out
    assert f"lovecraft_mlx: trains in this plan ({line}; then up to 64 held-out examples" in out
    # ... with a warning that the pod's address is the shipped placeholder.
    assert "warning: pods.runpod.host is the placeholder POD_IP" in proc.stderr


def test_a_real_run_on_the_placeholder_pod_stops_before_anything(tmp_path, tripwire):
    """The same fresh clone, run for real: it stops before its first job, even the local ones,
    and says what to put where. No connection is attempted, nothing is written."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("Snakefile", "rules", "src", "scripts", "config", "data", "environment.yml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, clone / part)
    env, calls = tripwire
    proc = snakemake(clone, "lovecraft_mlx", snakefile=clone / "Snakefile", env=env, check=False)
    assert proc.returncode != 0
    assert (
        "config: pods.runpod.host is the placeholder POD_IP: replace it with your pod's address"
    ) in proc.stderr
    assert "Nothing was run." in proc.stderr
    assert not (clone / "results").exists() and not (clone / "logs").exists()
    assert not calls.exists(), f"a refused run called {calls.read_text()}"
    # A target that needs no pod still builds (the validation report, say).
    proc = snakemake(
        clone, "results/lovecraft/data/train.jsonl", snakefile=clone / "Snakefile", env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_defaults_from_the_schema_are_applied(tmp_path):
    overlay = {
        "runs": {
            "bare": {
                "data": "d.jsonl",
                "base_model": "Qwen/Qwen2.5-14B",
                "profile": "qwen25_14b",
                "pod": "runpod",
            }
        }
    }
    proc = dry_run(tmp_path, overlay, "results/bare/llamafactory/train.yaml")
    assert proc.returncode == 0, proc.stderr


# --- the profiles --------------------------------------------------------------------------


def test_qwen25_32b_a100_is_exactly_the_guides_yaml():
    """The default run's generated YAML is the guide's, with only the pod-side paths changed, and
    the held-out side named (eval_dataset): the graph splits by val_size itself."""
    guide = yaml.safe_load(GUIDE_YAML.read_text())
    run = DEFAULT_CONFIG["runs"]["lovecraft"]
    args = train_yaml.train_args("lovecraft", run)
    assert args["dataset"] == guide["dataset"] == "lovecraft_sft"
    assert args.pop("eval_dataset") == "lovecraft_eval"
    assert args.pop("dataset_dir") == "data"
    assert args.pop("output_dir") == "output"
    guide.pop("output_dir")
    # ... plus the profile's early stopping (patience 2), as LLaMA-Factory's own keys.
    stopping = {
        "early_stopping_steps": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "save_strategy": "steps",
        "restore_callback_states_from_checkpoint": True,
    }
    assert {key: args.pop(key) for key in stopping} == stopping
    assert args == guide


def test_qwen25_14b_follows_the_guides_advice_for_smaller_gpus():
    big = train_yaml.load_profile("qwen25_32b_a100")
    small = train_yaml.load_profile("qwen25_14b")
    assert small["lora_rank"] == 32
    assert small["lora_alpha"] / small["lora_rank"] == big["lora_alpha"] / big["lora_rank"] == 4
    assert {k: v for k, v in small.items() if k not in ("lora_rank", "lora_alpha")} == {
        k: v for k, v in big.items() if k not in ("lora_rank", "lora_alpha")
    }


def test_tiny_cpu_needs_no_gpu():
    tiny = train_yaml.load_profile("tiny_cpu")
    assert "quantization_bit" not in tiny and tiny["bf16"] is False
    assert tiny["report_to"] == "none"
    assert tiny["eval_steps"] < tiny["max_steps"], "evaluates, so best-checkpoint logic runs"


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "config/hparams").glob("*.yaml")))
def test_every_profile_key_is_a_llamafactory_key(profile):
    keys = train_yaml.known_keys()
    assert set(train_yaml.load_profile(profile)) <= keys


def test_a_profile_with_a_typo_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "p.yaml").write_text("lora_rank: 8\nlearnig_rate: 1.0e-4\n")
    with pytest.raises(
        train_yaml.ConfigError, match=r"p\.yaml: 'learnig_rate' .* did you mean 'learning_rate'"
    ):
        train_yaml.load_profile("p", tmp_path)


def test_overrides_win_over_the_profile():
    run = {**DEFAULT_CONFIG["runs"]["lovecraft"], "overrides": {"max_steps": 800, "lora_rank": 32}}
    args = train_yaml.train_args("lovecraft", run)
    assert args["max_steps"] == 800 and args["lora_rank"] == 32 and args["lora_alpha"] == 256


def test_llamafactorys_defaults_are_filled_once_where_the_arguments_are_built(tmp_path):
    """A profile that leaves out lora_rank, lora_alpha and cutoff_len gets LLaMA-Factory's own
    defaults in train.yaml, so every rule and script reads one value."""
    (tmp_path / "bare.yaml").write_text("stage: sft\nfinetuning_type: lora\ntemplate: qwen\n")
    run = {**DEFAULT_CONFIG["runs"]["lovecraft"], "profile": "bare"}
    args = train_yaml.train_args("x", run, profiles_dir=tmp_path)
    assert (args["lora_rank"], args["lora_alpha"], args["cutoff_len"]) == (8, 16, 2048)
    run["overrides"] = {"lora_rank": 16, "cutoff_len": None}  # a null counts as left out
    args = train_yaml.train_args("x", run, profiles_dir=tmp_path)
    assert (args["lora_rank"], args["lora_alpha"], args["cutoff_len"]) == (16, 32, 2048)


def test_local_base_model_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = {**DEFAULT_CONFIG["runs"]["lovecraft"], "base_model": "./models/tiny", "profile": "tiny_cpu"}
    assert train_yaml.train_args("x", run)["model_name_or_path"] == str(tmp_path / "models/tiny")


# --- the generated files agree with each other ---------------------------------------------


def test_dataset_info_declares_the_dataset_the_yaml_trains_on():
    args = train_yaml.train_args("lovecraft", DEFAULT_CONFIG["runs"]["lovecraft"])
    info = dataset_info("lovecraft")
    assert list(info) == [args["dataset"], args["eval_dataset"]]
    assert info[args["eval_dataset"]]["file_name"] == "eval.jsonl"
    assert info[args["dataset"]]["columns"] == {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
    }


def test_data_stage_end_to_end_through_snakemake(tmp_path):
    data = tmp_path / "data" / "my_run.jsonl"
    data.parent.mkdir()
    shutil.copy(SAMPLE_DATA, data)
    overlay = {
        "runs": {
            "my-run": {
                "data": "data/my_run.jsonl",
                "base_model": "Qwen/Qwen2.5-14B",
                "profile": "qwen25_14b",
                "pod": "runpod",
                "overrides": {"max_steps": 300},
            }
        }
    }
    over = write_config(tmp_path / "overlay.yaml", overlay)
    targets = [
        "results/my-run/data/validation.json",
        "results/my-run/llamafactory/train.yaml",
        "results/my-run/llamafactory/dataset_info.json",
    ]
    snakemake(tmp_path, *targets, configfile=over)
    out = yaml.safe_load((tmp_path / targets[1]).read_text())
    assert out["max_steps"] == 300 and out["dataset"] == "my-run_sft"
    assert out["model_name_or_path"] == "Qwen/Qwen2.5-14B"
    info = json.loads((tmp_path / targets[2]).read_text())
    assert list(info) == ["my-run_sft", "my-run_eval"] and out["eval_dataset"] == "my-run_eval"
    report = json.loads((tmp_path / targets[0]).read_text())
    assert report["examples"] == 40 and report["train_examples"] + report["eval_examples"] == 40

    # A rerun with nothing changed runs nothing.
    proc = snakemake(tmp_path, "-n", *targets, configfile=over)
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # A bad edit fails at validation, names file and line, and leaves no normalised data.
    data.write_text(data.read_text() + '{"instruction": "x", "output": ""}\n', encoding="utf-8")
    proc = snakemake(tmp_path, *targets, configfile=over, check=False)
    assert proc.returncode != 0
    assert 'data/my_run.jsonl:41: missing field "input"' in output(proc)
    assert not (tmp_path / "results/my-run/data/train.jsonl").exists()


def test_train_yaml_cli_builds_from_a_config(tmp_path):
    out = tmp_path / "train.yaml"
    proc = run_script(
        "train_yaml.py", "--run", "lovecraft", "--config", REPO / "config" / "config.yaml", "--output", out
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(out.read_text())["lora_rank"] == 64
    proc = run_script("train_yaml.py", "--args", '{"lora_rnak": 1}', "--output", out)
    assert proc.returncode == 1 and "did you mean 'lora_rank'" in proc.stderr
