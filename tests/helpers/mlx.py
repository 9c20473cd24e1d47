"""Helpers for the MLX-stage tests: real PEFT adapters on the tiny model, logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT = "The ancient house on the hill was silent, and the shadows"


def token_ids(model_dir: Path, text: str = TEXT) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False)


def make_peft_adapter(
    base: Path, out: Path, ids: list[int] | None = None, seed: int = 0, **lora
) -> tuple[np.ndarray, np.ndarray]:
    """Save a PEFT adapter trained in name only: lora_B (and DoRA's magnitude) are perturbed so
    the adapter changes the logits. Returns (base logits, PEFT logits) for `ids`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ids = ids or token_ids(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        before = model(torch.tensor([ids])).logits[0].numpy()
    lora.setdefault("target_modules", TARGETS)
    peft_model = get_peft_model(model, LoraConfig(**lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.randn(param.shape, generator=generator))
    peft_model.eval()
    with torch.no_grad():
        after = peft_model(torch.tensor([ids])).logits[0].numpy()
    peft_model.save_pretrained(out)
    return before, after


def mlx_logits(base: Path, adapter: Path | None, ids: list[int]) -> np.ndarray:
    import mlx.core as mx
    import mlx_lm

    model, _ = mlx_lm.load(str(base), adapter_path=str(adapter) if adapter else None)
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))
