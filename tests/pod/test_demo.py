"""`make demo`'s real run, built once for this file (the `demo` fixture: config/demo.yaml with its
paths made absolute, in a working directory of its own; the base model built and pretrained,
trained with LLaMA-Factory on the CPU through the local executor, converted, quantised to 4 bits,
measured, sampled), and what it shows:

- the samples read as text: the demo's tiny base model is pretrained on the sample data
  (scripts/make_tiny_model.py --pretrain-steps), so what the bundle generates for the held-out
  prompts is words of that text, not the byte soup of random weights;
- what the Mac bundle keeps: the pod's own evaluation of the chosen checkpoint (LLaMA-Factory)
  against mlx-lm's loss on the same held-out examples, and mlx-lm's own tools on the bundle.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lora_style.mlx import fidelity
from lora_style.prompt_format import load_template, render_prompt, user_content
from lora_style.tiny_model import corpus_texts

from helpers.sshd import free_port
from helpers.workflow import SAMPLE_DATA, demo_config, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.pod]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`make demo`'s graph run once (tests/pod: trained with LLaMA-Factory on the CPU, converted,
    quantised, measured, sampled): (its working directory, its config file)."""
    tmp = tmp_path_factory.mktemp("demo")
    config = demo_config(tmp / "demo.yaml")
    work = tmp / "demo"
    snakemake(work, "--printshellcmds", "lovecraft_mlx", configfile=config, timeout=1200)
    return work, config


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


def records(work):
    losses = json.loads((work / "results/lovecraft/fidelity/losses.json").read_text())
    reference = json.loads((work / "results/lovecraft/train/reference_eval.json").read_text())
    return losses, reference


def test_the_pod_and_mlx_measure_the_same_loss_on_the_unquantised_adapter(demo):
    """The tiny profile trains unquantised, so LLaMA-Factory's eval_loss of the chosen checkpoint
    and mlx-lm's loss of the unquantised base + the converted adapter are the same quantity."""
    work, _ = demo
    losses, reference = records(work)
    held_out = (work / "results/lovecraft/data/eval.jsonl").read_text().splitlines()
    assert reference["examples"] == losses["examples"] == len(held_out) > 0
    assert reference["eval_loss"] > 0.3, "a loss this small would prove little"
    assert losses["unquantised_adapter_loss"] == pytest.approx(reference["eval_loss"], rel=0.01)
    assert losses["base_4bit_loss"] > losses["unquantised_adapter_loss"], "the adapter learnt something"


def test_the_4bit_bundles_gap_is_measured_and_reported(demo):
    work, _ = demo
    losses, reference = records(work)
    meta = json.loads((work / "lora_adapters/lovecraft_mlx/metadata.json").read_text())
    verdict = meta["fidelity"]
    assert verdict["pod_loss"] == reference["eval_loss"]
    assert verdict["bundle_loss"] == pytest.approx(losses["bundle_loss"], abs=1e-6)
    learnt = losses["base_4bit_loss"] - reference["eval_loss"]
    kept = 100 * (losses["base_4bit_loss"] - losses["bundle_loss"]) / learnt
    assert verdict["kept_percent"] == pytest.approx(kept, abs=0.1)
    assert verdict["gap_percent"] == pytest.approx(100 - kept, abs=0.1)
    assert f"keeps {kept:.0f}% of what the adapter learnt" in verdict["sentence"]
    page = (work / "results/lovecraft/report/metadata.html").read_text()
    assert "What the Mac bundle keeps" in page and f"keeps {kept:.0f}%" in page
    if not verdict["ok"]:
        assert "lovecraft_quant_table" in verdict["sentence"]


def test_an_adapter_scaled_by_zero_is_caught_by_the_verdict(demo, tmp_path):
    import mlx.core as mx

    work, _ = demo
    losses, reference = records(work)
    broken = tmp_path / "broken"
    shutil.copytree(work / "lora_adapters/lovecraft_mlx", broken)
    weights = mx.load(str(broken / "adapters.safetensors"))
    mx.save_safetensors(
        str(broken / "adapters.safetensors"),
        {k: mx.zeros_like(v) if k.endswith("lora_b") else v for k, v in weights.items()},
    )
    examples = fidelity.read_examples(work / "results/lovecraft/data/eval.jsonl", 64)
    measured = fidelity.measure(
        examples, load_template("qwen"), 512, str(work / "models/tiny-qwen2-4bit-mlx"), str(broken), log=print
    )
    assert measured["bundle_loss"] == pytest.approx(measured["base_4bit_loss"], rel=1e-5)
    verdict = fidelity.verdict(measured, reference, 10.0, "lovecraft")
    assert verdict["ok"] is False and abs(verdict["kept_percent"]) < 1
    assert "keeps 0% of what the adapter learnt" in verdict["sentence"]


def test_the_quant_table_measures_each_candidate(demo):
    """`snakemake lovecraft_quant_table` on the demo: the 4-bit base and the four default
    candidates (group size 32, 6 and 8 bits, mixed_4_6) with the adapter, and the fused model
    (mlx_lm.fuse) alone, each with size, loss and speed."""
    work, config = demo
    snakemake(work, "lovecraft_quant_table", configfile=config, timeout=900)
    numbers = json.loads((work / "results/lovecraft/quant_table.json").read_text())
    rows = {row["name"]: row for row in numbers["rows"]}
    assert list(rows) == ["4bit", "g32", "6bit", "8bit", "mixed_4_6", "fused"]
    assert not rows["fused"]["adapter"] and rows["fused"]["loss"] > 0.1  # mlx_lm.fuse, measured alone
    fused = work / "lora_adapters/lovecraft_fused_mlx"
    assert (fused / "chat_template.jinja").read_text() == (
        work / "lora_adapters/lovecraft_mlx/chat_template.jinja"
    ).read_text()
    assert (rows["g32"]["bits"], rows["g32"]["group_size"]) == (4, 32)
    assert (rows["6bit"]["bits"], rows["8bit"]["bits"]) == (6, 8) and rows["mixed_4_6"]["mixed"]
    assert rows["4bit"]["bytes"] < rows["6bit"]["bytes"] < rows["8bit"]["bytes"]
    assert all(row["tokens_per_s"] > 0 for row in rows.values())
    _, reference = records(work)
    # 8 bits is close to the unquantised weights the pod evaluated; 4 bits is what the bundle has.
    assert rows["8bit"]["loss"] == pytest.approx(reference["eval_loss"], rel=0.02)
    assert rows["4bit"]["loss"] == pytest.approx(records(work)[0]["bundle_loss"], rel=1e-5)
    table = (work / "results/lovecraft/quant_table.md").read_text()
    assert table.count("\n| ") == 1 + 6 and "tokens/s" in table


# ------------------------------------------------------------------ mlx-lm's own tools on the bundle

PROMPT = {
    "instruction": "Rewrite the following passage in the style of H. P. Lovecraft.",
    "input": "The bus broke down.",
}


def projects_generation(work, max_tokens: int) -> tuple[list[int], str]:
    """The prompt's token ids and the greedy text of the project's own generation (mlx/generate.py)."""
    from lora_style.mlx import generate

    template = load_template("qwen")
    model, tokenizer = generate.load_model(
        str(work / "models/tiny-qwen2-4bit-mlx"), str(work / "lora_adapters/lovecraft_mlx"), template
    )
    ids = generate.encode_prompt(tokenizer, render_prompt(PROMPT["instruction"], PROMPT["input"], template))
    return ids, generate.generate(model, tokenizer, ids, template, max_tokens=max_tokens, temp=0.0)


def test_the_bundles_chat_template_renders_the_training_token_ids(demo):
    """mlx_lm.load with the bundle's chat_template.jinja (what mlx_lm.server --chat-template
    uses): the chat renders to exactly the token ids the project's generation feeds the model."""
    import mlx_lm

    work, _ = demo
    bundle = work / "lora_adapters/lovecraft_mlx"
    check = json.loads((work / "results/lovecraft/chat_template.json").read_text())
    assert check["shipped_template_matches"] and not check["base_template_matches"]  # tiny: no template
    _, tokenizer = mlx_lm.load(
        str(work / "models/tiny-qwen2-4bit-mlx"),
        adapter_path=str(bundle),
        tokenizer_config={"chat_template": (bundle / "chat_template.jinja").read_text()},
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_content(PROMPT["instruction"], PROMPT["input"])}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids, _ = projects_generation(work, 1)
    assert list(tokenizer.encode(text, add_special_tokens=False)) == ids


def test_mlx_lm_generate_with_the_bundle_generates_what_the_project_does(demo):
    """The command bundle_help prints (mlx_lm.generate --model BASE --adapter-path ADAPTER, the
    prompt rendered): the same prompt token count and, greedy, the same text."""
    work, _ = demo
    ids, text = projects_generation(work, 16)
    rendered = render_prompt(PROMPT["instruction"], PROMPT["input"], load_template("qwen"))
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("mlx_lm.generate")),
            *("--model", "models/tiny-qwen2-4bit-mlx", "--adapter-path", "lora_adapters/lovecraft_mlx"),
            *("--ignore-chat-template", "--prompt", rendered.replace("\n", "\\n")),
            *("--temp", "0", "--max-tokens", "16"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Prompt: {len(ids)} tokens" in proc.stdout
    generated = proc.stdout.split("==========\n")[1].rsplit("\n", 1)[0]
    assert generated.strip() == text and text


def test_mlx_lm_server_answers_a_chat_request_with_the_adapter(demo):
    """mlx_lm.server with the bundle (--adapter-path, --chat-template), one chat completion over
    real HTTP on 127.0.0.1: the answer is the project's own greedy generation."""
    work, _ = demo
    _, text = projects_generation(work, 8)
    port = free_port()
    bundle = work / "lora_adapters/lovecraft_mlx"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlx_lm.server")),
            *("--model", "models/tiny-qwen2-4bit-mlx", "--adapter-path", "lora_adapters/lovecraft_mlx"),
            *("--chat-template", (bundle / "chat_template.jinja").read_text()),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        body = json.dumps(
            {
                "messages": [
                    {"role": "user", "content": user_content(PROMPT["instruction"], PROMPT["input"])}
                ],
                "max_tokens": 8,
                "temperature": 0.0,
            }
        ).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = json.loads(response.read())
                break
            except (ConnectionError, urllib.error.URLError):
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, "mlx_lm.server did not answer in 120 s"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    content = answer["choices"][0]["message"]["content"]
    assert content.strip() == text, (content, text)
