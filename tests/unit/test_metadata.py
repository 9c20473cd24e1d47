"""metadata.json: the guide's fields from the config and the data, plus provenance."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from lora_style.config.train_yaml import train_args
from lora_style.data.validate import main as validate
from lora_style.mlx import metadata as write_metadata
from lora_style.prompt_format import load_template, render_prompt

from helpers.workflow import REPO, SAMPLE_DATA

SUMMARY = {
    "run": "lovecraft",
    "run_id": "lovecraft-20260101-120000",
    "best_step": 600,
    "best_eval_loss": 0.358,
    "selected_by": "min_eval_loss",
    "total_steps": 1500,
    "wall_time_s": 25200.0,
    "llamafactory_version": "0.9.5",
    "sha256": {},
    "gpu_time": {
        "attempts": 2,
        "wall_seconds": 25200.0,
        "gpus": 1,
        "gpu_hours": 7.0,
        "usd_per_hour": 1.89,
        "usd": 13.23,
    },
    "estimate": {"steps": 600, "gpu_hours": 7.14, "usd": 13.5},
    "cut_by_budget": False,
}


@pytest.fixture
def inputs(tmp_path):
    """The default config's run, its validated data, and a PEFT folder as training leaves it."""
    run_cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["runs"]["lovecraft"]
    args = train_args("lovecraft", run_cfg)
    validation = tmp_path / "validation.json"
    assert (
        validate([str(SAMPLE_DATA), "--output", str(tmp_path / "train.jsonl"), "--report", str(validation)])
        == 0
    )
    peft = tmp_path / "lovecraft_peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": args["lora_rank"],
                "lora_alpha": args["lora_alpha"],
                "use_rslora": False,
                "base_model_name_or_path": run_cfg["base_model"],
            }
        )
    )
    (peft / "training_summary.json").write_text(json.dumps(SUMMARY))
    argv = [
        "--run",
        "lovecraft",
        "--author",
        run_cfg["author"],
        "--base-model",
        "models/Qwen2.5-32B-4bit-mlx",
        "--base-model-id",
        run_cfg["base_model"],
        "--lora-rank",
        str(args["lora_rank"]),
        "--lora-alpha",
        str(args["lora_alpha"]),
        "--template",
        args["template"],
        "--validation",
        str(validation),
        "--peft",
        str(peft),
        "--output",
        str(tmp_path / "mlx" / "metadata.json"),
    ]
    return run_cfg, args, tmp_path, argv


def test_fields_match_the_config_and_the_data(inputs):
    run_cfg, args, tmp_path, argv = inputs
    assert write_metadata.main(argv) == 0
    meta = json.loads((tmp_path / "mlx" / "metadata.json").read_text())

    # The guide's fields: the config's author, rank 64 / alpha 256, the local 4-bit model.
    assert meta["author"] == run_cfg["author"] == "H.P. Lovecraft"
    assert meta["lora_rank"] == args["lora_rank"] == 64
    assert meta["lora_alpha"] == args["lora_alpha"] == 256
    assert meta["base_model"] == "models/Qwen2.5-32B-4bit-mlx"
    assert meta["base_model_id"] == "Qwen/Qwen2.5-32B"
    # Counted in the data, independently of the validator.
    lines = [line for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert meta["training_examples"] == len(lines) == 40
    normalised = (tmp_path / "train.jsonl").read_bytes()
    assert meta["data"]["sha256"] == hashlib.sha256(normalised).hexdigest()
    # The checkpoint training chose.
    assert meta["checkpoint"]["step"] == 600 and meta["checkpoint"]["eval_loss"] == 0.358
    assert meta["checkpoint"]["run_id"] == SUMMARY["run_id"]
    # What the training cost, all attempts, beside the plan's estimate.
    assert meta["gpu_time"]["usd"] == 13.23 and meta["estimate"]["usd"] == 13.5
    assert meta["checkpoint"]["cut_by_budget"] is False
    # The prompt format training used, from the template, not the guide's.
    template = load_template(args["template"])
    fmt = meta["prompt_format"]
    assert fmt["template"] == "qwen"
    assert fmt["system"] == template["default_system"]
    assert fmt["example"]["rendered"] == render_prompt("{instruction}", "{input}", template)
    assert "<|im_start|>user\n{instruction}\n{input}<|im_end|>" in fmt["example"]["rendered"]


def test_no_eval_gives_null_eval_loss(inputs):
    _, _, tmp_path, argv = inputs
    (tmp_path / "lovecraft_peft" / "training_summary.json").write_text(
        json.dumps({**SUMMARY, "best_eval_loss": None, "selected_by": "last_checkpoint"})
    )
    assert write_metadata.main(argv) == 0
    meta = json.loads((tmp_path / "mlx" / "metadata.json").read_text())
    assert meta["checkpoint"]["eval_loss"] is None


def test_stale_adapter_is_not_labelled_with_new_numbers(inputs, capsys):
    _, _, tmp_path, argv = inputs
    argv[argv.index("--lora-rank") + 1] = "32"  # the config changed, the adapter did not
    assert write_metadata.main(argv) == 1
    assert "trained with r=64" in capsys.readouterr().err
    assert not (tmp_path / "mlx" / "metadata.json").exists()
