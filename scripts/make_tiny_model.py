"""Build a tiny random Qwen2 model with a BPE tokenizer trained on local text (no hub).

    python scripts/make_tiny_model.py --corpus data/training/lovecraft/train_sft.jsonl \
        --output models/tiny-qwen2

It stands in for Qwen2.5-32B in the demo and the tests: the same architecture and chat
special tokens, 2 layers of width 64, so LLaMA-Factory trains it on a CPU in seconds and
MLX can quantise it (MLX groups 64 input features, so every width is a multiple of 64).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_texts(paths: list[str]) -> list[str]:
    texts = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(v for v in json.loads(line).values() if isinstance(v, str))
    return texts


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
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


def make_tiny_model(corpus: list[str], output: str, layers: int = 2, hidden: int = 64,
                    intermediate: int = 128, vocab_size: int = 512, seed: int = 0) -> Path:
    out = Path(output)
    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size)
    model = build_model(len(tokenizer), layers, hidden, intermediate, seed)
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
    parser.add_argument("--corpus", nargs="+", required=True, help="JSONL files to train the tokenizer on")
    parser.add_argument("--output", required=True, help="model directory to write")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_tiny_model(args.corpus, args.output, args.layers, args.hidden, args.intermediate,
                    args.vocab_size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
