"""`make demo`'s real run, built once for this file (the `demo` fixture: config/demo.yaml with its
paths made absolute, in a working directory of its own; the base model built and pretrained,
trained with LLaMA-Factory on the CPU through the local executor, converted, quantised to 4 bits,
measured, sampled), and what it shows:

- the local executor (what `make demo` trains with): preflight alone launches nothing, the
  training runs on this machine and the best checkpoint is fetched;
- the samples read as text: the demo's tiny base model is pretrained on the sample data
  (scripts/make_tiny_model.py --pretrain-steps), so what the bundle generates for the held-out
  prompts is words of that text, not the byte soup of random weights;
- what the Mac bundle keeps: the pod's own evaluation of the chosen checkpoint (LLaMA-Factory)
  against mlx-lm's loss on the same held-out examples, and mlx-lm's own tools on the bundle;
- `snakemake --report` (rules/report.smk), the one page a user opens after a run: built as a zip
  and as one HTML file from the demo's run, each thing it promises found in it with the numbers
  of the run's own records (the validation statistics, the preflight, the loss curves with the
  chosen step, the training summary, the metadata and the samples). The quick tests, which render
  the pages' warnings from hand-made records, are tests/graph/test_report_pages.py.

The demo's pod is given a price here (gpu_hourly_usd, which `make demo`'s CPU has not), so the
report's cost lines show; a price changes no trained weight.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.dom.minidom
import zipfile
from pathlib import Path

import pytest

from lora_style.mlx import fidelity
from lora_style.prompt_format import load_template, render_prompt, user_content
from lora_style.tiny_model import corpus_texts

from helpers.sshd import free_port
from helpers.workflow import SAMPLE_DATA, SAMPLE_HELDOUT, demo_config, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.pod]


PRICE = 2.0  # $/h: the report's cost lines


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`make demo`'s graph run once (tests/pod: trained with LLaMA-Factory on the CPU, converted,
    quantised, measured, sampled): (its working directory, its config file)."""
    tmp = tmp_path_factory.mktemp("demo")
    config = demo_config(tmp / "demo.yaml", gpu_hourly_usd=PRICE)
    work = tmp / "demo"
    # The standalone preflight target first: it checks the pod (here, this machine) and launches
    # nothing; the graph's run then takes its findings as they are.
    snakemake(work, "results/lovecraft/train/preflight.json", configfile=config)
    pod = work / "pod"
    assert not pod.exists() or not list(pod.iterdir()), "preflight launches nothing"
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


def test_the_demo_trains_with_the_local_executor_and_fetches_the_best_checkpoint(demo):
    work, _ = demo
    report = json.loads((work / "results/lovecraft/train/preflight.json").read_text())
    assert report["llamafactory_version"] == "0.9.5"
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "llamafactory-cli": True,
        "GPU": True,
        "disk": True,
    }
    launch = json.loads((work / "results/lovecraft/train/launch.json").read_text())
    assert launch["executor"] == "local" and launch["action"] == "launched"
    run_dir = work / "pod" / launch["run_id"]
    assert (run_dir / "exit_code").read_text().strip() == "0"
    summary = json.loads((work / "lora_adapters/lovecraft_peft/training_summary.json").read_text())
    assert summary["total_steps"] == 10 and summary["best_step"] in (5, 10)
    assert summary["selected_by"] == "min_eval_loss"
    assert (work / "lora_adapters/lovecraft_peft/adapter_model.safetensors").read_bytes() == (
        run_dir / f"output/checkpoint-{summary['best_step']}/adapter_model.safetensors"
    ).read_bytes()


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


def record(work, rel: str) -> dict:
    return json.loads((work / rel).read_text())


def records(work):
    """The Mac side's losses and the pod's reference evaluation."""
    return record(work, "results/lovecraft/fidelity/losses.json"), record(
        work, "results/lovecraft/train/reference_eval.json"
    )


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


# ------------------------------------------------------------------ the report of the demo's run

SECTIONS = ["1. Data", "2. Preflight", "3. Training", "4. MLX bundle", "5. Samples"]


@pytest.fixture(scope="module")
def reported(demo, tmp_path_factory):
    """`snakemake --report` of the demo's run, as a zip (unpacked) and as one HTML file: (the
    demo's working directory, the unpacked report, the HTML file)."""
    work, config = demo
    tmp = tmp_path_factory.mktemp("report")
    for name in ("report.zip", "report.html"):
        snakemake(work, "--report", str(tmp / name), "lovecraft_mlx", configfile=config)
    with zipfile.ZipFile(tmp / "report.zip") as archive:
        archive.extractall(tmp / "unzipped")
    return work, tmp / "unzipped" / "report", tmp / "report.html"


def item(report, name: str) -> str:
    """The text of one report item (the zip keeps each under data/raw/<id>/<name>)."""
    (path,) = report.glob(f"data/raw/*/{name}")
    return path.read_text(encoding="utf-8")


def text_of(page: str) -> str:
    """A page's text without its tags, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_the_report_has_a_section_per_stage_with_captions(reported):
    _, report, single_file = reported
    index = (report / "report.html").read_text(encoding="utf-8")
    categories = json.loads(re.search(r"var categories = (\{.*?\});", index).group(1))
    assert {section: sorted(paths) for section, paths in categories["lovecraft"].items()} == {
        "1. Data": ["results/lovecraft/report/validation.html"],
        "2. Preflight": ["results/lovecraft/report/preflight.html"],
        "3. Training": ["results/lovecraft/report/training.html", "results/lovecraft/train/loss.svg"],
        "4. MLX bundle": ["results/lovecraft/report/metadata.html"],
        "5. Samples": ["results/lovecraft/report/samples.html"],
    }
    assert "What validation found in the training data of run" in index  # a caption
    assert "click an item to show it" in index  # the front page
    # The one-file report holds the same sections, each item embedded in it.
    single = single_file.read_text(encoding="utf-8")
    assert all(section in single for section in SECTIONS)
    assert single.count("data:text/html;") >= 5 and "data:image/svg+xml;" in single


def test_validation_statistics(reported):
    work, report, _ = reported
    facts = record(work, "results/lovecraft/data/validation.json")
    page = text_of(item(report, "validation.html"))
    assert (
        f"examples {facts['examples']} to train on (train.jsonl) {facts['train_examples']} "
        f"held out (eval.jsonl) {facts['eval_examples']} (val_size 0.1, split by a hash"
    ) in page
    assert f"duplicates {facts['duplicates']}" in page
    assert f"cutoff_len (tokens) {facts['cutoff_len']} examples over it {facts['over_cutoff_len']}" in page
    assert f"All {facts['examples']} examples fit in cutoff_len {facts['cutoff_len']} tokens" in page
    tokens = facts["tokens"]
    assert (
        f"whole example (tokens, in the run's template) {tokens['min']} {tokens['median']:g} "
        f"{tokens['mean']:g} {tokens['max']}"
    ) in page
    assert f"output (characters) {facts['chars']['output']['min']}" in page


def test_preflight_findings(reported):
    work, report, _ = reported
    preflight = record(work, "results/lovecraft/train/launch.json")["attempt"]["preflight"]
    page = text_of(item(report, "preflight.html"))
    assert f"All {len(preflight['checks'])} checks passed" in page
    for check in preflight["checks"]:
        assert f"{check['name']} passed {check['detail']}" in page
    assert f"LLaMA-Factory {preflight['llamafactory_version']}" in page


def test_loss_plot_marks_the_chosen_checkpoint(reported):
    work, report, _ = reported
    summary = record(work, "results/lovecraft/train/training_summary.json")
    svg = item(report, "loss.svg")
    xml.dom.minidom.parseString(svg)
    assert f"chosen: step {summary['best_step']}, eval_loss {summary['best_eval_loss']:.4g}" in svg
    assert "train loss" in svg and "eval loss" in svg


def test_training_summary(reported):
    work, report, _ = reported
    summary = record(work, "results/lovecraft/train/training_summary.json")
    finished = record(work, "results/lovecraft/train/finished.json")
    page = text_of(item(report, "training.html"))
    assert (
        f"checkpoint-{summary['best_step']} of {summary['total_steps']} steps: the lowest "
        f"eval_loss, {summary['best_eval_loss']:.4g}"
    ) in page
    assert f"steps trained {summary['total_steps']}" in page
    assert f"training wall time (all attempts) {summary['wall_time_s']} s" in page
    used = summary["gpu_time"]
    assert f"GPU time {used['gpu_hours']:.4g} GPU-hours (1 GPU)" in page
    assert f"cost ${used['usd']:.2f} at ${PRICE:.2f}/h" in page
    assert "the plan said lovecraft: 10 steps" in page
    (attempt,) = finished["attempts"]
    assert "Attempts (1) # started ended from step exit code took 1 " in page
    assert f"{attempt['end'] - attempt['start']} s" in page
    # The guide's results table: a row per evaluation of the run's log_history (steps 5 and 10).
    state = record(work, "results/lovecraft/train/trainer_state.json")
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    rows = summary["results_table"]
    assert [(r["step"], r["eval_loss"]) for r in rows] == [(e["step"], e["eval_loss"]) for e in evals]
    for row in rows:
        assert f"{row['step']} {row['epoch']:.2f} {row['train_loss']:.4f} {row['eval_loss']:.4f}" in page
        assert row["usd"] == pytest.approx(row["gpu_hours"] * PRICE, abs=1e-3)
    assert f"Next run: {summary['advice']}" in page


def test_metadata(reported):
    work, report, _ = reported
    metadata = record(work, "lora_adapters/lovecraft_mlx/metadata.json")
    page = text_of(item(report, "metadata.html"))
    for key in ("author", "base_model", "lora_rank", "lora_alpha", "training_examples"):
        assert f"{key} {metadata[key]}" in page
    assert f"template {metadata['prompt_format']['template']}" in page


def test_samples(reported):
    work, report, _ = reported
    markdown = (work / "results/lovecraft/samples.md").read_text(encoding="utf-8")
    first_output = re.search(r"Output:\n\n(`{3,})text\n(.*?)\n\1", markdown, re.S).group(2)
    page = html.unescape(item(report, "samples.html"))
    heldout = json.loads(SAMPLE_HELDOUT.read_text().splitlines()[0])
    assert f"1. {heldout['instruction']}" in page
    assert first_output in page
    assert "Samples: lovecraft" not in page  # the page's own title replaces samples.md's
