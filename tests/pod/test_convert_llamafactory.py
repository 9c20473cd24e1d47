"""The guide's step 7 on the real producer: an adapter trained by `llamafactory-cli train` (the pod
environment's peft) converted for mlx-lm gives PEFT's logits in MLX. The converter's other tests,
on adapters made with `peft` here, are tests/graph/test_convert.py."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import lora_style.mlx.convert as converter

from helpers.mlx import mlx_logits, token_ids
from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, run_script


@pytest.mark.pod
@pytest.mark.slow
def test_adapter_trained_by_llamafactory_gives_peft_logits_in_mlx(tiny_model, tmp_path):
    """The real producer: `llamafactory-cli train` (its peft version, its adapter_config.json),
    with rsLoRA, 3 steps on the CPU; then the comparison of tests/graph/test_convert.py."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_style.config import train_yaml
    from lora_style.data.dataset_info import DATA_FILE

    data = tmp_path / train_yaml.DATASET_DIR
    data.mkdir()
    assert (
        run_script(
            "validate_dataset.py",
            SAMPLE_DATA,
            "--output",
            data / DATA_FILE,
            "--report",
            tmp_path / "validation.json",
        ).returncode
        == 0
    )
    assert run_script("dataset_info.py", "--run", "t", "--output", data / "dataset_info.json").returncode == 0
    args = train_yaml.train_args(
        "t",
        {
            "profile": "tiny_cpu",
            "base_model": str(tiny_model),
            "overrides": {
                "max_steps": 3,
                "save_steps": 3,
                "val_size": 0.0,
                "eval_strategy": "no",
                "plot_loss": False,
                "use_rslora": True,
            },
        },
    )
    train_yaml.write_yaml(args, str(tmp_path / "train.yaml"))
    proc = subprocess.run(
        [str(LLAMAFACTORY_CLI), "train", "train.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = tmp_path / train_yaml.OUTPUT_DIR / "checkpoint-3"

    ids = token_ids(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        before = model(torch.tensor([ids])).logits[0].numpy()
        peft_after = (
            PeftModel.from_pretrained(model, checkpoint).eval()(torch.tensor([ids])).logits[0].numpy()
        )
    assert converter.main(["--input", str(checkpoint), "--output", str(tmp_path / "mlx")]) == 0
    cfg = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    assert cfg["lora_parameters"]["scale"] == pytest.approx(32 / 8**0.5)
    diff = np.abs(mlx_logits(tiny_model, tmp_path / "mlx", ids) - peft_after).max()
    effect = np.abs(peft_after - before).max()
    print(f"llamafactory rsLoRA: max |mlx - peft| = {diff:.2e}, adapter effect = {effect:.3f}")
    assert diff < 1e-3 and effect > 100 * diff
