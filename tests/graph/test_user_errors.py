"""A hand-edited or truncated JSON file gets a one-line error naming the file, never a traceback."""

from __future__ import annotations

import json

from helpers.workflow import run_script


def assert_clean_error(proc, *needles):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_generate_names_a_broken_metadata_json(tmp_path):
    (tmp_path / "metadata.json").write_text('{"base_model": \n')
    proc = run_script("generate.py", "--adapter-path", tmp_path, "--instruction", "x")
    assert_clean_error(proc, f"{tmp_path / 'metadata.json'}:2: not valid JSON")


def test_quantize_check_names_a_config_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]\n")
    proc = run_script("quantize_base.py", "--check", tmp_path)
    assert_clean_error(proc, f"{tmp_path / 'config.json'}: expected a JSON object")


def test_metadata_names_the_missing_training_summary(tmp_path):
    (tmp_path / "validation.json").write_text(json.dumps({"examples": 1, "sha256": "0" * 64}))
    peft = tmp_path / "peft"
    peft.mkdir()
    out = tmp_path / "mlx" / "metadata.json"
    proc = run_script(
        "lora_style.mlx.metadata",
        "--run",
        "r",
        "--base-model",
        "models/b-4bit-mlx",
        "--base-model-id",
        "org/b",
        "--lora-rank",
        "8",
        "--lora-alpha",
        "32",
        "--template",
        "qwen",
        "--validation",
        tmp_path / "validation.json",
        "--peft",
        peft,
        "--output",
        out,
    )
    assert_clean_error(proc, "training_summary.json: missing (written by the training stage)")
    assert not out.exists()


def test_converter_names_a_truncated_adapter_config(tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"r": 8,')
    (peft / "adapter_model.safetensors").write_bytes(b"")
    proc = run_script("convert_peft_to_mlx.py", "--input", peft, "--output", tmp_path / "mlx")
    assert_clean_error(proc, "adapter_config.json:1: not valid JSON")
    assert not (tmp_path / "mlx").exists()
