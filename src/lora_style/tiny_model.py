"""Build a tiny Qwen2 model with a BPE tokenizer trained on local text (no hub).

    python scripts/make_tiny_model.py --corpus data/training/lovecraft/train_sft.jsonl \
        --output models/tiny-qwen2 --pretrain-steps 300

It stands in for Qwen2.5-32B in the demo and the tests: the same architecture and chat
special tokens, 2 layers of width 64, so LLaMA-Factory trains it on a CPU in seconds and
MLX can quantise it (MLX groups 64 input features, so every width is a multiple of 64).

The tokenizer is Qwen's kind (byte-level BPE) with room for every word of the corpus as one
token, so whatever the model samples decodes to whole words, never to a stray byte of a
multi-byte character (U+FFFD). With --pretrain-steps the random model is first trained as a
causal LM on the corpus's texts (300 steps: about 15 s on 2 idle CPU cores), so the demo's
samples read as words of that text; without it (the tests) the weights stay random.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_texts(paths: list[str]) -> list[str]:
    """One text per JSONL object: its string values (instruction, input, output) a line each,
    so the model learns to start a text after a newline, as it must after the chat template's
    `<|im_start|>assistant` line."""
    texts = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.append("\n".join(v for v in json.loads(line).values() if isinstance(v, str) and v))
    return texts


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # BPE stops merging once every word is one token, so a vocab_size above what the corpus
    # needs (about 3,500 for the sample data) gives a word-level vocabulary of byte-level BPE.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The template's text too, so a rendered prompt tokenises as it would for Qwen.
    tok.train_from_iterator(texts + ["system\nuser\nassistant\n"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=512,
    )


def build_model(vocab_size: int, layers: int, hidden: int, intermediate: int, seed: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for width in (hidden, intermediate):
        if width % 64:
            raise SystemExit(f"error: width {width} is not a multiple of 64; MLX cannot quantise it")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config).eval()


def pretrain(
    model,
    tokenizer,
    texts: list[str],
    steps: int,
    seed: int = 0,
    seq_len: int = 128,
    batch_size: int = 8,
    lr: float = 5e-3,
    warmup: int = 20,
) -> float:
    """Train `model` as a causal LM on `texts`, each ended by <|endoftext|>, in random windows
    of one stream; returns the last batch's loss. A progress line every 50 steps."""
    import torch

    ids = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    if len(ids) <= seq_len:
        raise SystemExit(f"error: the corpus has {len(ids)} tokens; pretraining needs more than {seq_len}")
    stream = torch.tensor(ids)
    windows = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # Linear warm-up, then cosine decay to zero.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    print(
        f"pretraining {steps} steps on {len(ids)} tokens ({len(texts)} texts), "
        f"batch {batch_size} x {seq_len}",
        flush=True,
    )
    model.train()
    start = time.monotonic()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=windows)
        batch = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps:
            print(
                f"step {step}/{steps}: loss {loss.item():.3f}, {time.monotonic() - start:.0f} s", flush=True
            )
    model.eval()
    return loss.item()


def make_tiny_model(
    corpus: list[str],
    output: str,
    layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    vocab_size: int = 4096,
    seed: int = 0,
    pretrain_steps: int = 0,
) -> Path:
    out = Path(output)
    texts = corpus_texts(corpus)
    tokenizer = build_tokenizer(texts, vocab_size)
    model = build_model(len(tokenizer), layers, hidden, intermediate, seed)
    if pretrain_steps:
        pretrain(model, tokenizer, texts, pretrain_steps, seed)
    # As Qwen2.5 base: <|endoftext|> ends and pads; the chat template stops at <|im_end|>.
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5 nests rope_theta under rope_parameters; mlx-lm's qwen2 reads it top-level.
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = model.config.rope_parameters["rope_theta"]
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", nargs="+", required=True, help="JSONL files: the tokenizer's and the pretraining's text"
    )
    parser.add_argument("--output", required=True, help="model directory to write")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="at most; BPE stops when every word of the corpus is one token",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain-steps", type=int, default=0, help="causal-LM steps on the corpus (0: random weights)"
    )
    args = parser.parse_args(argv)
    make_tiny_model(
        args.corpus,
        args.output,
        args.layers,
        args.hidden,
        args.intermediate,
        args.vocab_size,
        args.seed,
        args.pretrain_steps,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
