"""`snakemake --report`: the one page a user opens after a run (rules/report.smk).

The slow test trains the demo's run for real (the `local` executor, as `make demo`), builds the
report as a zip and as one HTML file, and finds each thing the report promises in it, with the
numbers of the run's own records: the validation statistics, the preflight, the loss curves with
the chosen step, the training summary, the metadata and the samples. The quick tests, which render
the pages' warnings from hand-made records, are tests/graph/test_report_pages.py.
"""

from __future__ import annotations

import html
import json
import re
import xml.dom.minidom
import zipfile

import pytest

from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, SAMPLE_HELDOUT, snakemake, write_config

SECTIONS = ["1. Data", "2. Preflight", "3. Training", "4. MLX bundle", "5. Samples"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """The demo's run trained on this machine, its bundle built, its report as zip and HTML."""
    tmp = tmp_path_factory.mktemp("report")
    config = write_config(
        tmp / "config.yaml",
        {
            "runs": {
                "lovecraft": {
                    "data": str(SAMPLE_DATA),
                    "heldout": str(SAMPLE_HELDOUT),
                    "base_model": str(tiny_model),
                    "author": "H.P. Lovecraft",
                    "profile": "tiny_cpu",
                    "pod": "local",
                    "fidelity": {"reference": False},  # no evaluation after training: not read here
                    "samples": {"count": 2, "max_tokens": 16},
                }
            },
            "pods": {
                "local": {
                    "executor": "local",
                    "remote_dir": "pod",
                    "poll_seconds": 1,
                    "llamafactory_cli": str(LLAMAFACTORY_CLI),
                    "gpu_hourly_usd": 2.0,
                }
            },
        },
    )
    work = tmp / "work"
    snakemake(work, "lovecraft_mlx", configfile=config)
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


def record(work, rel: str) -> dict:
    return json.loads((work / rel).read_text())


@pytest.mark.slow
@pytest.mark.pod
def test_the_report_has_a_section_per_stage_with_captions(built):
    _, report, single_file = built
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


@pytest.mark.slow
@pytest.mark.pod
def test_validation_statistics(built):
    work, report, _ = built
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


@pytest.mark.slow
@pytest.mark.pod
def test_preflight_findings(built):
    work, report, _ = built
    preflight = record(work, "results/lovecraft/train/launch.json")["attempt"]["preflight"]
    page = text_of(item(report, "preflight.html"))
    assert f"All {len(preflight['checks'])} checks passed" in page
    for check in preflight["checks"]:
        assert f"{check['name']} passed {check['detail']}" in page
    assert f"LLaMA-Factory {preflight['llamafactory_version']}" in page


@pytest.mark.slow
@pytest.mark.pod
def test_loss_plot_marks_the_chosen_checkpoint(built):
    work, report, _ = built
    summary = record(work, "results/lovecraft/train/training_summary.json")
    svg = item(report, "loss.svg")
    xml.dom.minidom.parseString(svg)
    assert f"chosen: step {summary['best_step']}, eval_loss {summary['best_eval_loss']:.4g}" in svg
    assert "train loss" in svg and "eval loss" in svg


@pytest.mark.slow
@pytest.mark.pod
def test_training_summary(built):
    work, report, _ = built
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
    assert f"cost ${used['usd']:.2f} at $2.00/h" in page
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
        assert row["usd"] == pytest.approx(row["gpu_hours"] * 2.0, abs=1e-3)
    assert f"Next run: {summary['advice']}" in page


@pytest.mark.slow
@pytest.mark.pod
def test_metadata(built):
    work, report, _ = built
    metadata = record(work, "lora_adapters/lovecraft_mlx/metadata.json")
    page = text_of(item(report, "metadata.html"))
    for key in ("author", "base_model", "lora_rank", "lora_alpha", "training_examples"):
        assert f"{key} {metadata[key]}" in page
    assert f"template {metadata['prompt_format']['template']}" in page


@pytest.mark.slow
@pytest.mark.pod
def test_samples(built):
    work, report, _ = built
    markdown = (work / "results/lovecraft/samples.md").read_text(encoding="utf-8")
    first_output = re.search(r"Output:\n\n(`{3,})text\n(.*?)\n\1", markdown, re.S).group(2)
    page = html.unescape(item(report, "samples.html"))
    heldout = json.loads(SAMPLE_HELDOUT.read_text().splitlines()[0])
    assert f"1. {heldout['instruction']}" in page
    assert first_output in page
    assert "Samples: lovecraft" not in page  # the page's own title replaces samples.md's
