"""Adapters mlx-lm's LoRA cannot represent are refused: why, what to do, exit 1, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import lora_style.mlx.convert as converter

from helpers.mlx import make_peft_adapter
from helpers.workflow import SCRIPTS


@pytest.fixture(scope="module")
def plain_adapter(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "peft"
    make_peft_adapter(tiny_model, out, r=4, lora_alpha=16)
    return out


def edited(plain_adapter, tmp_path, **changes):
    """A copy of the plain adapter with adapter_config.json keys changed."""
    out = tmp_path / "peft"
    shutil.copytree(plain_adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def refused(peft, out, capsys, *expected, base=None):
    """Convert; assert a refusal naming `expected`, and that no adapter file exists."""
    argv = ["--input", str(peft), "--output", str(out)] + (["--base", str(base)] if base else [])
    assert converter.main(argv) == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert not (out / "adapters.safetensors").exists()
    assert not (out / "adapter_config.json").exists()
    assert not list(out.glob(".*")) if out.exists() else True  # no staging left over
    return err


# Made by PEFT itself: what a training run can really produce.
PEFT_MADE = {
    # e.g. LLaMA-Factory's resize_vocab / new special tokens save embed_tokens and lm_head whole.
    "modules_to_save": (dict(modules_to_save=["lm_head"]), ["modules_to_save", "merge"]),
    "lora_bias": (dict(lora_bias=True), ["lora_bias", "LoRALinear"]),
    "bias_all": (dict(bias="all"), ["bias is 'all'", "bias vectors"]),
    "rank_pattern": (dict(rank_pattern={"q_proj": 2}), ["rank_pattern", "r=2", "one rank"]),
    "alpha_pattern": (dict(alpha_pattern={"down_proj": 64}), ["alpha=64", "one scale"]),
    "lora_on_lm_head": (
        dict(target_modules=["q_proj", "lm_head"]),
        ["not LoRA factors of a decoder block", "lm_head"],
    ),
}


@pytest.mark.parametrize("case", PEFT_MADE)
def test_refuses_what_peft_made(case, tiny_model, tmp_path, capsys):
    lora, expected = PEFT_MADE[case]
    make_peft_adapter(tiny_model, tmp_path / "peft", r=4, lora_alpha=16, **lora)
    refused(
        tmp_path / "peft",
        tmp_path / "mlx",
        capsys,
        "cannot be converted" if case not in ("rank_pattern", "alpha_pattern", "lora_on_lm_head") else "",
        *expected,
        base=tiny_model,
    )
    assert not (tmp_path / "mlx").exists()


def test_refuses_non_lora_peft_type(tiny_model, tmp_path, capsys):
    import torch
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    get_peft_model(
        model, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    ).save_pretrained(tmp_path / "peft")
    refused(tmp_path / "peft", tmp_path / "mlx", capsys, "peft_type is IA3", "LoRA and DoRA")


CONFIG_EDITS = {
    "fan_in_fan_out": (dict(fan_in_fan_out=True), ["fan_in_fan_out", "Conv1D"]),
    "pissa": (dict(init_lora_weights="pissa"), ["pissa", "pissa_convert"]),
    "layer_replication": (dict(layer_replication=[[0, 2], [1, 2]]), ["layer_replication"]),
    "trainable_tokens": (dict(trainable_token_indices=[5, 6]), ["trainable_token_indices"]),
    "stale_config": (dict(r=16), ["rank 4", "r=16", "does not belong"]),
    "dora_without_magnitudes": (dict(use_dora=True), ["lora_magnitude_vector"]),
}


@pytest.mark.parametrize("case", CONFIG_EDITS)
def test_refuses_config_it_cannot_honour(case, plain_adapter, tmp_path, capsys):
    changes, expected = CONFIG_EDITS[case]
    refused(edited(plain_adapter, tmp_path, **changes), tmp_path / "mlx", capsys, *expected)


def test_every_reason_at_once(plain_adapter, tmp_path, capsys):
    err = refused(
        edited(
            plain_adapter, tmp_path, fan_in_fan_out=True, bias="lora_only", modules_to_save=["embed_tokens"]
        ),
        tmp_path / "mlx",
        capsys,
    )
    assert err.count("\n  - ") == 3


def test_wrong_base_is_refused(plain_adapter, tiny_model, tmp_path, capsys):
    """The self-check: a base whose widths differ (a 128-wide model) fails before anything is kept."""
    base = tmp_path / "wide-base"
    base.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    config.update(hidden_size=128, intermediate_size=256)
    (base / "config.json").write_text(json.dumps(config))
    err = refused(
        plain_adapter,
        tmp_path / "mlx",
        capsys,
        "does not fit the model mlx-lm builds",
        "shape (64, 4), the model's parameter is (128, 4)",
        base=base,
    )
    assert "nothing written" in err
    assert not (tmp_path / "mlx").exists()


def test_base_with_fewer_blocks_is_refused(plain_adapter, tiny_model, tmp_path, capsys):
    base = tmp_path / "one-block"
    base.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (base / "config.json").write_text(json.dumps(config))
    refused(plain_adapter, tmp_path / "mlx", capsys, "trains block 1", "has 1 blocks", base=base)


def test_stale_outputs_are_removed_and_others_kept(plain_adapter, tmp_path, capsys):
    out = tmp_path / "mlx"
    out.mkdir()
    (out / "adapters.safetensors").write_text("old")
    (out / "adapter_config.json").write_text("{}")
    (out / "metadata.json").write_text("{}")  # another rule's file in the same folder
    refused(edited(plain_adapter, tmp_path, fan_in_fan_out=True), out, capsys, "fan_in_fan_out")
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json"]


def test_unreadable_inputs(plain_adapter, tmp_path, capsys):
    (tmp_path / "run" / "checkpoint-600").mkdir(parents=True)
    refused(tmp_path / "run", tmp_path / "mlx", capsys, "checkpoint-600", "pass one of them")

    truncated = tmp_path / "truncated"
    shutil.copytree(plain_adapter, truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(truncated, tmp_path / "mlx", capsys, "outside the file")


def test_cli_exit_code_and_message_without_traceback(plain_adapter, tmp_path):
    peft = edited(plain_adapter, tmp_path, modules_to_save=["embed_tokens", "lm_head"])
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "convert_peft_to_mlx.py"),
            "--input",
            str(peft),
            "--output",
            str(tmp_path / "mlx"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "modules_to_save ['embed_tokens', 'lm_head']" in proc.stderr
    assert "llamafactory-cli export" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlx").exists()
