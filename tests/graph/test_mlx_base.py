"""The guide's step 8: a 4-bit MLX base model, checked to be quantised, that runs the adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import lora_style.mlx.convert as converter
from lora_style.mlx import quantize_base

from helpers.mlx import make_peft_adapter, mlx_logits, token_ids
from helpers.workflow import SCRIPTS


@pytest.fixture(scope="module")
def base_4bit(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny-qwen2-4bit-mlx"
    quantize_base.quantize(str(tiny_model), str(out))
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model, base_4bit, tmp_path_factory):
    """The guide's alpha/rank ratio of 4, converted against the 4-bit base (as the rule does)."""
    root = tmp_path_factory.mktemp("adapter")
    ids = token_ids(tiny_model)
    _, peft_logits = make_peft_adapter(tiny_model, root / "peft", ids, r=8, lora_alpha=32)
    assert (
        converter.main(
            ["--input", str(root / "peft"), "--output", str(root / "mlx"), "--base", str(base_4bit)]
        )
        == 0
    )
    return root / "mlx", ids, peft_logits


def test_base_is_quantised_to_4_bits(base_4bit):
    import mlx.nn as nn
    import mlx_lm

    config = json.loads((base_4bit / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    summary = quantize_base.check_quantized(base_4bit)
    assert summary["quantized_linears"] == 2 * 7
    model, _ = mlx_lm.load(str(base_4bit))
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert not list(base_4bit.parent.glob(".*"))  # no staging folder left


def test_unquantised_conversion_is_caught(tiny_model, tmp_path):
    """The guide's warning: without -q mlx_lm.convert writes full precision, silently."""
    from mlx_lm.convert import convert

    convert(str(tiny_model), str(tmp_path / "fp"))
    with pytest.raises(quantize_base.QuantizeError, match="without -q"):
        quantize_base.check_quantized(tmp_path / "fp")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "quantize_base.py"), "--check", str(tmp_path / "fp")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "~61 GB instead of ~18 GB" in proc.stderr


def test_existing_mlx_path_is_refused(tiny_model, base_4bit, capsys):
    before = sorted(p.name for p in base_4bit.iterdir())
    assert quantize_base.main(["--hf-path", str(tiny_model), "--mlx-path", str(base_4bit)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in base_4bit.iterdir()) == before


def test_missing_local_base_is_not_taken_for_a_hub_id(tmp_path, capsys):
    assert quantize_base.main(["--hf-path", "./models/nowhere", "--mlx-path", str(tmp_path / "out")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_adapter_runs_on_the_4bit_base(base_4bit, adapter, tiny_model):
    adapter_dir, ids, peft_logits = adapter
    with_adapter = mlx_logits(base_4bit, adapter_dir, ids)
    without = mlx_logits(base_4bit, None, ids)
    fp32_base = mlx_logits(tiny_model, None, ids)
    effect = np.abs(with_adapter - without).max()
    quant_error = np.abs(without - fp32_base).max()
    towards_peft = np.abs(with_adapter - peft_logits).max()
    print(
        f"4-bit: adapter effect {effect:.3f}, quantisation error {quant_error:.3f}, "
        f"|4-bit+adapter - PEFT fp32| {towards_peft:.3f}"
    )
    assert effect > 0.1
    # The adapter moves the 4-bit model towards PEFT's fp32 result, not somewhere else.
    assert towards_peft < np.abs(without - peft_logits).max()


def test_generates_text_on_the_4bit_base(base_4bit, adapter):
    from lora_style.mlx import generate

    adapter_dir, _, _ = adapter
    template = generate.load_template("qwen")
    model, tokenizer = generate.load_model(str(base_4bit), str(adapter_dir), template)
    ids = generate.encode_prompt(tokenizer, generate.render_prompt("Describe a house.", "", template))
    import mlx_lm

    responses = list(mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=12))
    assert responses and responses[-1].generation_tokens >= 1
    assert responses[-1].prompt_tokens == len(ids)


def test_generate_cli_logs_the_rendered_prompt(base_4bit, adapter):
    adapter_dir, _, _ = adapter
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "generate.py"),
            "--model",
            str(base_4bit),
            "--adapter-path",
            str(adapter_dir),
            "--prompt",
            "Rewrite in the old style. ### The bus broke down.",
            "--max-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "<|im_start|>user\nRewrite in the old style.\nThe bus broke down.<|im_end|>\n<|im_start|>assistant\n"
    ) in proc.stderr
    assert "rendered prompt (template qwen" in proc.stderr


def test_generate_refuses_a_missing_model_instead_of_downloading(tmp_path, capsys):
    from lora_style.mlx import generate

    assert generate.main(["--model", "Qwen/Qwen2.5-32B", "--instruction", "x"]) == 1
    assert "no local MLX model" in capsys.readouterr().err


def test_generate_takes_base_and_template_from_the_bundle_metadata(base_4bit, adapter, tmp_path, capsys):
    """`--adapter-path` alone is enough for a bundle: metadata.json names the base and the format."""
    import shutil

    from lora_style.mlx import generate

    adapter_dir, _, _ = adapter
    bundle = tmp_path / "bundle"
    shutil.copytree(adapter_dir, bundle)
    (bundle / "metadata.json").write_text(
        json.dumps({"base_model": str(base_4bit), "prompt_format": {"template": "qwen"}})
    )
    assert (
        generate.main(
            [
                "--adapter-path",
                str(bundle),
                "--instruction",
                "Describe a cellar.",
                "--max-tokens",
                "4",
                "--temp",
                "0",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "<|im_start|>user\nDescribe a cellar.<|im_end|>" in err
