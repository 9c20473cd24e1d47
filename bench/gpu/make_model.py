"""A random model with Qwen2.5-32B's exact shapes but only a few of its 64 blocks.

    python bench/gpu/make_model.py --blocks 8 --output /tmp/gpu-check/model-8 --device cuda

Built where it trains (nothing large travels to the GPU machine): each block is one of
Qwen2.5-32B's (hidden 5120, SwiGLU 27648, 40 query and 8 key/value heads of 128), and the
embedding and LM head are its own (vocabulary 152064, untied), so the 4-bit quantisation, the
LoRA layers (rank 64 on all seven projections) and the logits are the real run's, block for
block. Weights are random, in bf16 on a GPU (as the hub's checkpoint is stored). The tokenizer
is the tiny model's kind (scripts/make_tiny_model.py: byte-level BPE with Qwen's special tokens,
trained here on the sample data), smaller than the vocabulary: every id it makes is in range.

--shrink K (the CPU rehearsal only) divides the widths and the vocabulary by K, keeping the
head size 128 and the code path: the same classes, the same files, the same training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Qwen2.5-32B's config.json, the keys that give its shapes (hub: Qwen/Qwen2.5-32B).
QWEN25_32B = {
    "hidden_size": 5120,
    "intermediate_size": 27648,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "num_hidden_layers": 64,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
}
HEAD_DIM = 128
SAMPLE_DATA = ROOT / "data" / "training" / "lovecraft" / "train_sft.jsonl"


def round_up(value: float, multiple: int) -> int:
    return int(-(-value // multiple) * multiple)


def model_config(blocks: int, shrink: int = 1) -> dict:
    """Qwen2.5-32B's shape keys with `blocks` blocks; with `shrink`, widths and vocabulary / K
    (multiples of 64: what MLX and the tensor cores like), still 128 per head."""
    config = dict(QWEN25_32B, num_hidden_layers=blocks)
    if shrink > 1:
        hidden = max(HEAD_DIM, round_up(QWEN25_32B["hidden_size"] / shrink, HEAD_DIM))
        heads = hidden // HEAD_DIM
        config.update(
            hidden_size=hidden,
            intermediate_size=round_up(QWEN25_32B["intermediate_size"] / shrink, 64),
            num_attention_heads=heads,
            num_key_value_heads=max(
                1, heads * QWEN25_32B["num_key_value_heads"] // QWEN25_32B["num_attention_heads"]
            ),
            vocab_size=round_up(QWEN25_32B["vocab_size"] / shrink, 64),
        )
    return config


def make_model(blocks: int, output: str, device: str = "cuda", shrink: int = 1, seed: int = 0) -> dict:
    """Write the model and its tokenizer to `output`; returns what was built, with timings."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lora_style.tiny_model import build_tokenizer, corpus_texts

    start = time.monotonic()
    shape = model_config(blocks, shrink)
    tokenizer = build_tokenizer(corpus_texts([str(SAMPLE_DATA)]), min(4096, shape["vocab_size"]))
    if len(tokenizer) > shape["vocab_size"]:
        raise SystemExit(
            f"error: the tokenizer has {len(tokenizer)} ids, over the vocabulary {shape['vocab_size']}"
        )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = Qwen2Config(
        **shape,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in bf16 on the GPU itself: no fp32 copy, no transfer
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in model.parameters())
    built = time.monotonic()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.model_max_length = QWEN25_32B["max_position_embeddings"]  # as Qwen's own
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    saved = time.monotonic()
    size = sum(p.stat().st_size for p in Path(output).rglob("*") if p.is_file())
    return {
        "blocks": blocks,
        "shrink": shrink,
        "device": device,
        "dtype": str(dtype).split(".")[-1],
        "params": params,
        "bytes_on_disk": size,
        "tokenizer_ids": len(tokenizer),
        "build_s": round(built - start, 1),
        "save_s": round(saved - built, 1),
        "config": shape,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, required=True, help="of Qwen2.5-32B's 64")
    parser.add_argument("--output", required=True)
    parser.add_argument("--device", default="cuda", help="cuda (bf16) or cpu (fp32)")
    parser.add_argument("--shrink", type=int, default=1, help="CPU rehearsal: widths / K")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(make_model(args.blocks, args.output, args.device, args.shrink, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
