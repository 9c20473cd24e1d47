"""`make demo`'s samples read as text: the demo's tiny base model is pretrained on the sample
data (scripts/make_tiny_model.py --pretrain-steps), so what the bundle generates for the
held-out prompts is words of that text, not the byte soup of random weights.

The real graph runs, as `make demo` runs it (the `demo` fixture of tests/conftest.py, shared with
test_demo_fidelity.py): config/demo.yaml with its paths made absolute, in a working directory of
its own (the base model built, pretrained, trained with LLaMA-Factory on the CPU, converted,
quantised to 4 bits, measured, sampled).
"""

from __future__ import annotations

import json
import re
import string

import pytest

from lora_style.tiny_model import corpus_texts

from helpers.workflow import SAMPLE_DATA, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.pod]

PUNCTUATION = string.punctuation + "“”‘’—"


def words(text: str) -> list[str]:
    """Whitespace-separated tokens, punctuation stripped, lower-cased; a dash joins two words."""
    tokens = (token.strip(PUNCTUATION).lower() for token in re.split(r"[\s—]+", text))
    return [token for token in tokens if token]


def sample_outputs(samples_md: str) -> list[str]:
    """The text of each sample's Output block (scripts/generate.py's samples_markdown)."""
    return [m[2] for m in re.finditer(r"^Output:\n\n(`{3,})text\n(.*?)\n\1$", samples_md, re.M | re.S)]


def test_the_demo_samples_are_words_of_the_shipped_text(demo):
    work, _ = demo
    known = set(words(" ".join(corpus_texts([str(SAMPLE_DATA)]))))
    samples = (work / "results" / "lovecraft" / "samples.md").read_text(encoding="utf-8")
    outputs = sample_outputs(samples)
    assert len(outputs) == 4, samples
    for output in outputs:
        assert "\ufffd" not in output, output
        said = words(output)
        assert len(said) >= 5, f"too little generated: {output!r}"
        unknown = [word for word in said if word not in known]
        assert len(unknown) <= 0.2 * len(said), f"{unknown} of {output!r}"


def test_the_demo_base_model_was_pretrained(demo):
    """Its log shows the pretraining's loss falling; the model keeps Qwen's chat tokens."""
    work, _ = demo
    log = (work / "logs" / "models" / "tiny-qwen2.log").read_text()
    losses = [float(m) for m in re.findall(r"^step \d+/\d+: loss ([\d.]+)", log, re.M)]
    assert losses and losses[-1] < 2.0 < losses[0], log
    model = work / "models" / "tiny-qwen2"
    assert json.loads((model / "config.json").read_text())["rope_theta"] == 10000.0
    tokens = {t["content"] for t in json.loads((model / "tokenizer.json").read_text())["added_tokens"]}
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} <= tokens


def test_sampling_again_gives_the_same_samples(demo):
    """The samples rule passes --seed: regenerating them changes nothing."""
    work, config = demo
    samples = work / "results" / "lovecraft" / "samples.md"
    before = samples.read_bytes()
    snakemake(work, "--forcerun", "samples", "--", "lovecraft_mlx", configfile=config)
    assert samples.read_bytes() == before
