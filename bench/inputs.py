"""The bench's inputs, made here in a temporary folder (nothing is downloaded):

- SFT JSONL of N lines of English-like text (the sample data's words, Zipf-distributed, with a
  few rare made-up words so BPE has merges to do), ~750 bytes a line, 1% of them long (~16,000
  characters, over a cutoff_len of 2048 tokens), as a real style data set has a few;
- one JSONL line of 50 MB (a single example whose output is the whole book);
- a Qwen2-style tokenizer: byte-level BPE with Qwen2's own pre-tokenizer regex and NFC
  normaliser, trained here on that text to a 32,000-token vocabulary (Qwen2.5's has 151,643;
  it cannot be fetched here, and this one tokenises at a comparable speed per byte);
- PEFT adapters with the shapes of Qwen2.5-14B and -32B at rank 64 (fp32, as LLaMA-Factory
  saves LoRA weights), with a base config.json; the values are random bytes, only sizes matter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "training" / "lovecraft" / "train_sft.jsonl"

# Qwen2's pre-tokenizer (tokenizer.json of Qwen/Qwen2.5-*: Split with this pattern, then
# ByteLevel without its own regex).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

QWEN25 = {  # config.json of the hub models, the keys the shapes need
    "14B": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_attention_heads=40,
        num_key_value_heads=8,
        num_hidden_layers=48,
        vocab_size=152064,
    ),
    "32B": dict(
        hidden_size=5120,
        intermediate_size=27648,
        num_attention_heads=40,
        num_key_value_heads=8,
        num_hidden_layers=64,
        vocab_size=152064,
    ),
}
TARGETS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


class TextMaker:
    """English-like text from the sample data's vocabulary, fast enough for 75 MB in seconds."""

    def __init__(self, seed: int = 0):
        words = set()
        for line in SAMPLE.read_text(encoding="utf-8").splitlines():
            for value in json.loads(line).values():
                words.update(re.findall(r"[A-Za-z']+[,.;]?", value))
        self.rng = np.random.default_rng(seed)
        letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
        rare = ["".join(self.rng.choice(letters, self.rng.integers(4, 12))) for _ in range(3000)]
        vocab = sorted(words) + rare
        self.vocab = np.array(vocab, dtype=object)
        ranks = np.arange(1, len(words) + 1)  # Zipf over the real words; the made-up ones rarest
        self.rng.shuffle(ranks)
        ranks = np.concatenate([ranks, np.arange(len(words) + 1, len(vocab) + 1)])
        weights = 1.0 / ranks
        self.p = weights / weights.sum()
        self.word = float(np.dot(self.p, [len(w) + 1 for w in vocab]))  # chars, with its space

    def text(self, chars: int) -> str:
        n = max(1, round(chars / self.word))
        return " ".join(self.vocab[self.rng.choice(len(self.vocab), n, p=self.p)])

    def texts(self, count: int, chars: int) -> list[str]:
        n = max(1, round(chars / self.word))
        picks = self.rng.choice(len(self.vocab), (count, n), p=self.p)
        return [" ".join(row) for row in self.vocab[picks]]


def write_jsonl(path: Path, lines: int, seed: int = 0, long_every: int = 100) -> int:
    """`lines` examples, ~750 bytes each; every `long_every`-th has a ~16,000-character output.
    Returns the file's size."""
    maker = TextMaker(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, lines, 5000):
            count = min(5000, lines - start)
            ins, inp, outp = (maker.texts(count, 60), maker.texts(count, 220), maker.texts(count, 320))
            for i in range(count):
                output = outp[i]
                if (start + i) % long_every == long_every - 1:
                    output = maker.text(16_000)
                out.write(
                    json.dumps(
                        {"instruction": ins[i], "input": inp[i] if i % 7 else "", "output": output},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return path.stat().st_size


def write_long_line(path: Path, megabytes: int = 50, seed: int = 1) -> int:
    """One example whose output is `megabytes` MB of text: the whole file on one line."""
    maker = TextMaker(seed)
    chunks = [maker.text(1_000_000) for _ in range(megabytes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(
            json.dumps(
                {"instruction": "Rewrite the following passage.", "input": "", "output": " ".join(chunks)}
            )
            + "\n"
        )
    return path.stat().st_size


def build_tokenizer(corpus: Path, out: Path, vocab_size: int = 32_000, max_lines: int = 20_000) -> Path:
    """A Qwen2-style tokenizer.json (and tokenizer_config.json) trained on `corpus`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts():
        with open(corpus, encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number >= max_lines:
                    return
                yield from json.loads(line).values()

    tok.train_from_iterator(texts(), trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return out


def module_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA target in one block."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    return {
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (h, i),
        "mlp.up_proj": (h, i),
        "mlp.down_proj": (i, h),
    }


def write_adapter(out: Path, model: str, rank: int = 64, layers: int | None = None) -> dict:
    """A PEFT adapter folder with Qwen2.5-`model`'s shapes, streamed to disk (the writer of
    scripts/safetensors_io.py), and the base's config.json in out/base. Returns its sizes."""
    from lora_style.safetensors_io import write_safetensors

    cfg = dict(QWEN25[model])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    shapes = module_shapes(cfg)
    noise = np.random.default_rng(0).integers(
        0, 2**32, max(max(s) for s in shapes.values()) * rank, dtype=np.uint32
    )
    tensors, largest = [], 0
    for layer in range(cfg["num_hidden_layers"]):
        for path, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{path}"
            for part, shape in (("lora_A", (rank, fan_in)), ("lora_B", (fan_out, rank))):
                size = shape[0] * shape[1]
                largest = max(largest, 4 * size)
                tensors.append(
                    (
                        f"{key}.{part}.weight",
                        {"dtype": "F32", "shape": list(shape)},
                        lambda size=size, shape=shape: noise[:size].reshape(shape),
                    )
                )
    peft = out / "peft"
    peft.mkdir(parents=True)
    write_safetensors(peft / "adapter_model.safetensors", tensors, {"format": "pt"})
    (peft / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": rank,
                "lora_alpha": 2 * rank,
                "lora_dropout": 0.05,
                "target_modules": [p.split(".")[-1] for p in TARGETS],
                "bias": "none",
                "use_rslora": False,
                "use_dora": False,
                "fan_in_fan_out": False,
                "modules_to_save": None,
                "base_model_name_or_path": f"Qwen/Qwen2.5-{model}",
            }
        )
    )
    (out / "base").mkdir()
    (out / "base" / "config.json").write_text(
        json.dumps(
            {
                **cfg,
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "max_position_embeddings": 32768,
                "tie_word_embeddings": False,
            }
        )
    )
    return {"bytes": (peft / "adapter_model.safetensors").stat().st_size, "largest": largest}
