"""The guide's step 7: a PEFT adapter converted for mlx-lm means exactly what it meant in PEFT.

Real adapters are made with `peft` on the tiny Qwen2, their lora_B perturbed so they change the
logits; the converted adapter is loaded by `mlx_lm` on the same fp32 base, and both sides'
logits must agree far more closely than the adapter moves them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import lora_style.mlx.convert as converter

from helpers.mlx import make_peft_adapter, mlx_logits, token_ids
from helpers.workflow import SAMPLE_DATA, SCRIPTS


@pytest.fixture(scope="module")
def tiny_model_4layers(tmp_path_factory):
    from lora_style.tiny_model import make_tiny_model

    return make_tiny_model([str(SAMPLE_DATA)], str(tmp_path_factory.mktemp("m4") / "tiny-qwen2-4l"), layers=4)


CASES = {
    # The guide's lora_target: all with its alpha/rank ratio of 4 (64/256 there).
    "guide_ratio": dict(r=8, lora_alpha=32),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True),
    # Blocks 1 and 3 of 4, three modules: num_layers 3, block 2 wrapped but untrained.
    "layer_subset": dict(
        r=4, lora_alpha=16, layers_to_transform=[1, 3], target_modules=["q_proj", "v_proj", "down_proj"]
    ),
    "dora": dict(r=4, lora_alpha=16, use_dora=True),
}


@pytest.mark.parametrize("case", CASES)
def test_converted_adapter_gives_peft_logits_in_mlx(case, tiny_model, tiny_model_4layers, tmp_path):
    base = tiny_model_4layers if case == "layer_subset" else tiny_model
    ids = token_ids(base)
    before, peft_after = make_peft_adapter(base, tmp_path / "peft", ids, **CASES[case])

    assert (
        converter.main(
            ["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx"), "--base", str(base)]
        )
        == 0
    )
    mlx_after = mlx_logits(base, tmp_path / "mlx", ids)
    mlx_before = mlx_logits(base, None, ids)

    diff = np.abs(mlx_after - peft_after).max()
    effect = np.abs(peft_after - before).max()
    print(
        f"{case}: max |mlx - peft| = {diff:.2e}, adapter effect = {effect:.3f}, "
        f"ratio {effect / max(diff, 1e-12):.0f}"
    )
    assert np.abs(mlx_before - before).max() < 1e-3  # the same base on both sides
    assert diff < 1e-3
    assert effect > 100 * diff

    cfg = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    params = cfg["lora_parameters"]
    lora = CASES[case]
    expected_scale = lora["lora_alpha"] / (lora["r"] ** 0.5 if lora.get("use_rslora") else lora["r"])
    assert params["scale"] == pytest.approx(expected_scale)
    assert params["rank"] == lora["r"]
    assert cfg["fine_tune_type"] == ("dora" if lora.get("use_dora") else "lora")
    assert cfg["num_layers"] == (3 if case == "layer_subset" else 2)
    expected_keys = {
        f"{'mlp' if t in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{t}"
        for t in lora.get(
            "target_modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
    }
    assert set(params["keys"]) == expected_keys


def test_layout_is_transposed_and_renamed(tiny_model, tmp_path):
    from safetensors.numpy import load_file

    make_peft_adapter(tiny_model, tmp_path / "peft", r=4, lora_alpha=16)
    assert converter.main(["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx")]) == 0
    peft = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    mlx = load_file(tmp_path / "mlx" / "adapters.safetensors")
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    np.testing.assert_array_equal(
        mlx["model.layers.1.self_attn.q_proj.lora_a"], peft[f"{prefix}.lora_A.weight"].T
    )  # [in, r]
    np.testing.assert_array_equal(
        mlx["model.layers.1.self_attn.q_proj.lora_b"], peft[f"{prefix}.lora_B.weight"].T
    )  # [r, out]
    assert mlx["model.layers.1.self_attn.q_proj.lora_a"].shape == (64, 4)
    assert len(mlx) == len(peft) == 2 * 7 * 2


def test_all_blocks_need_no_base_config(tiny_model, tmp_path):
    """A hub id that is not local: an adapter on every block converts to num_layers -1 (all)."""
    ids = token_ids(tiny_model)
    _, peft_after = make_peft_adapter(tiny_model, tmp_path / "peft", ids, r=4, lora_alpha=16)
    config_path = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-32B"
    config_path.write_text(json.dumps(config))

    assert converter.main(["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx")]) == 0
    assert json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())["num_layers"] == -1
    assert np.abs(mlx_logits(tiny_model, tmp_path / "mlx", ids) - peft_after).max() < 1e-3


def test_layer_subset_without_base_asks_for_it(tiny_model_4layers, tmp_path, capsys):
    make_peft_adapter(tiny_model_4layers, tmp_path / "peft", r=4, lora_alpha=16, layers_to_transform=[2, 3])
    config_path = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "/workspace/models/Qwen2.5-32B"  # a pod's path
    config_path.write_text(json.dumps(config))

    assert converter.main(["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx")]) == 1
    err = capsys.readouterr().err
    assert "LAST num_layers blocks" in err and "--base" in err
    assert not (tmp_path / "mlx").exists()
    # With the base it converts: 4 blocks, lowest trained block 2.
    assert (
        converter.main(
            [
                "--input",
                str(tmp_path / "peft"),
                "--output",
                str(tmp_path / "mlx"),
                "--base",
                str(tiny_model_4layers),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())["num_layers"] == 2


def test_rank_pattern_that_changes_nothing_is_accepted(tiny_model, tmp_path):
    make_peft_adapter(
        tiny_model,
        tmp_path / "peft",
        r=4,
        lora_alpha=16,
        rank_pattern={"q_proj": 4},
        alpha_pattern={"down_proj": 16},
    )
    assert (
        converter.main(
            ["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx"), "--base", str(tiny_model)]
        )
        == 0
    )


def test_bf16_adapter_keeps_its_dtype(tiny_model, tmp_path):
    """bf16 has no numpy dtype: the converter moves bytes, so any float width works."""
    import mlx.core as mx
    from safetensors.torch import load_file, save_file

    make_peft_adapter(tiny_model, tmp_path / "peft", r=4, lora_alpha=16)
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v.bfloat16() for k, v in tensors.items()}, weights)
    assert (
        converter.main(
            ["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx"), "--base", str(tiny_model)]
        )
        == 0
    )
    out = mx.load(str(tmp_path / "mlx" / "adapters.safetensors"))
    name = "model.layers.0.mlp.down_proj.lora_b"
    assert out[name].dtype == mx.bfloat16
    expected = tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].bfloat16().T
    assert np.array_equal(np.array(out[name].astype(mx.float32)), expected.float().numpy())


def test_memory_stays_near_one_tensor(tiny_model, tmp_path):
    """A 16-module rank-256 adapter with 8 MB tensors (128 MB in all): the converter's peak
    memory grows by about two tensors, not by the adapter's size."""
    from safetensors.numpy import save_file

    peft = tmp_path / "peft"
    peft.mkdir()
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(16):
        prefix = f"base_model.model.model.layers.{layer}.mlp.down_proj"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((256, 8192), dtype=np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((1024, 256), dtype=np.float32)
    save_file(tensors, peft / "adapter_model.safetensors")
    del tensors
    (peft / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 256, "lora_alpha": 512, "base_model_name_or_path": ""})
    )
    # VmHWM is this process's own peak (ru_maxrss would include pytest's, inherited by fork).
    probe = (
        "import re, sys; import lora_style.mlx.convert as c;"
        "import mlx.core, numpy;"  # imported before the baseline, as in the run
        "c.verify = lambda *a: 'skipped';"  # only the streaming part is measured
        "kb = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read())[1]);"
        "base = kb('VmRSS');"
        "c.convert(sys.argv[2], sys.argv[3], log=lambda *_: None);"
        "print((kb('VmHWM') - base) / 1024)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(SCRIPTS), str(peft), str(tmp_path / "mlx")],
        capture_output=True,
        text=True,
        check=True,
    )
    growth_mb = float(proc.stdout.strip())
    print(f"peak memory growth {growth_mb:.1f} MB for a 128 MB adapter (largest tensor 8 MB)")
    assert growth_mb < 24  # two 8 MB buffers (bytes read + transposed copy) and some slack
    assert (tmp_path / "mlx" / "adapters.safetensors").stat().st_size > 128e6


# ------------------------------------------- speed (make bench) without changing what is checked


@pytest.mark.parametrize("case", ["layer_subset", "dora"])
def test_the_command_line_writes_what_the_function_writes(case, tiny_model, tiny_model_4layers, tmp_path):
    """`python scripts/convert_peft_to_mlx.py` (a fresh process, as the rule runs it) writes and
    checks exactly what convert() does in this process."""
    base = tiny_model_4layers if case == "layer_subset" else tiny_model
    make_peft_adapter(base, tmp_path / "peft", token_ids(base), **CASES[case])
    assert (
        converter.main(
            ["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "full"), "--base", str(base)]
        )
        == 0
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "convert_peft_to_mlx.py"),
            "--input",
            str(tmp_path / "peft"),
            "--output",
            str(tmp_path / "cli"),
            "--base",
            str(base),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "matched to the LoRA layers mlx-lm builds" in proc.stderr + proc.stdout
    for name in ("adapters.safetensors", "adapter_config.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_the_check_refuses_a_tensor_mlx_lm_would_not_load(tiny_model, tmp_path):
    """verify() loads the output with mlx-lm's own adapter loader on the model built from the
    base's config: a tensor for a block the model lacks is refused, with its name."""
    from safetensors.numpy import load_file, save_file

    make_peft_adapter(tiny_model, tmp_path / "peft", token_ids(tiny_model), r=4, lora_alpha=16)
    assert (
        converter.main(
            ["--input", str(tmp_path / "peft"), "--output", str(tmp_path / "mlx"), "--base", str(tiny_model)]
        )
        == 0
    )
    weights = tmp_path / "mlx" / "adapters.safetensors"
    tensors = load_file(weights)
    name = "model.layers.0.self_attn.q_proj.lora_a"
    tensors[name.replace("layers.0", "layers.7")] = tensors.pop(name)  # a block the model lacks
    save_file(tensors, weights, metadata={"format": "mlx"})
    base_config = json.loads((tiny_model / "config.json").read_text())
    with pytest.raises(converter.ConversionError, match=r"model\.layers\.7\.self_attn\.q_proj\.lora_a"):
        converter.verify(tmp_path / "mlx", base_config)


@pytest.mark.parametrize("shape", [(64, 27648), (27648, 64), (8, 3), (3, 8), (16, 16), (17, 1), (256, 5000)])
@pytest.mark.parametrize("dtype", [np.uint32, np.uint16])
def test_blocked_threaded_transpose_is_a_transpose(shape, dtype):
    from lora_style.safetensors_io import transpose_into

    src = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    dst = np.empty(shape[::-1], dtype)
    transpose_into(dst, src)
    assert np.array_equal(dst, src.T)
