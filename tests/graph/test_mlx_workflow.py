"""`snakemake lovecraft_mlx` builds the MLX bundle from a PEFT adapter, and rebuilds only what is stale.

Training is not run here (its own tests do that): a real PEFT adapter made with `peft` on the
tiny model stands where training leaves one, and only this stage's rules (plus the data
rules before them) may run, so the adapter folder is taken as given. The workflow runs from a
copy of the repository's Snakefile, rules, src, scripts and config, so a test can edit the code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from helpers.mlx import make_peft_adapter
from helpers.workflow import REPO, SAMPLE_DATA, SAMPLE_HELDOUT, snakemake_argv, write_config

RULES = [
    "validate_dataset",
    "dataset_info",
    "train_yaml",
    "base_4bit",
    "mlx_adapter",
    "fidelity_losses",
    "bundle_chat_template",
    "metadata",
    "samples",
    "loss_plot",
    "report_pages",
    "lovecraft_mlx",
]


def snakemake(repo, work, target, *flags, configfile):
    cmd = snakemake_argv(
        work,
        *flags,
        "--allowed-rules",
        *RULES,
        "--",
        target,
        configfile=configfile,
        snakefile=repo / "Snakefile",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(flags)} {target} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(proc) -> dict[str, int]:
    """The dry run's job table: {rule: count}."""
    table = proc.stdout.split("Job stats:", 1)
    if len(table) == 1:
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table[1], re.M) if m[1] != "total"}


def config(tmp_path, author="H.P. Lovecraft", fidelity=None):
    return write_config(
        tmp_path / "test.yaml",
        {
            "runs": {
                "lovecraft": {
                    "data": str(SAMPLE_DATA),
                    "heldout": str(SAMPLE_HELDOUT),
                    "base_model": "./models/tiny-qwen2",
                    "author": author,
                    "profile": "tiny_cpu",
                    "pod": "local",
                    "samples": {"count": 2, "max_tokens": 8},
                    **({"fidelity": fidelity} if fidelity else {}),
                }
            },
            "pods": {"local": {"executor": "local", "remote_dir": "pod"}},
        },
    )


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    repo = work / "repo"
    repo.mkdir()
    for part in ("Snakefile", "environment.yml"):
        shutil.copy2(REPO / part, repo / part)
    for part in ("requirements", "rules", "src", "scripts", "config"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_model, work / "models" / "tiny-qwen2")
    peft = work / "lora_adapters" / "lovecraft_peft"
    make_peft_adapter(work / "models" / "tiny-qwen2", peft, r=8, lora_alpha=32)  # tiny_cpu's
    summary = json.dumps(
        {
            "run": "lovecraft",
            "run_id": "test",
            "best_step": 10,
            "best_eval_loss": 4.2,
            "selected_by": "min_eval_loss",
            "total_steps": 10,
            "wall_time_s": 1.0,
            "llamafactory_version": "0.9.5",
            "sha256": {},
        }
    )
    (peft / "training_summary.json").write_text(summary)
    # And the training's records beside it, which the report reads.
    train = work / "results" / "lovecraft" / "train"
    train.mkdir(parents=True)
    (train / "training_summary.json").write_text(summary)
    (train / "trainer_state.json").write_text(
        json.dumps(
            {
                "log_history": [
                    {"step": 5, "loss": 4.6},
                    {"step": 5, "eval_loss": 4.4},
                    {"step": 10, "loss": 4.1},
                    {"step": 10, "eval_loss": 4.2},
                ]
            }
        )
    )
    (train / "launch.json").write_text(
        json.dumps({"run_id": "test", "pod": "local", "action": "launched", "attempt": None})
    )
    (train / "finished.json").write_text(json.dumps({"status": "finished", "attempts": []}))
    # No pod evaluated this made-up adapter: the verdict compares against the unquantised base here.
    (train / "reference_eval.json").write_text(json.dumps({"skipped": "no pod in this test"}))
    cfg = config(work)
    snakemake(repo, work, "lovecraft_mlx", configfile=cfg)
    return repo, work, cfg


def test_bundle_is_built(built):
    _, work, _ = built
    bundle = work / "lora_adapters" / "lovecraft_mlx"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "adapter_config.json",
        "adapters.safetensors",
        "chat_template.jinja",
        "metadata.json",
    ]
    adapter_config = json.loads((bundle / "adapter_config.json").read_text())
    assert adapter_config["num_layers"] == 2 and adapter_config["lora_parameters"]["scale"] == 4
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["author"] == "H.P. Lovecraft"
    assert meta["base_model"] == "models/tiny-qwen2-4bit-mlx"
    assert (meta["lora_rank"], meta["lora_alpha"], meta["data"]["examples"]) == (8, 32, 40)
    assert meta["training_examples"] + meta["data"]["held_out"] == 40 and meta["data"]["held_out"] > 0
    assert meta["checkpoint"]["step"] == 10
    assert (
        json.loads((work / "models" / "tiny-qwen2-4bit-mlx" / "config.json").read_text())["quantization"][
            "bits"
        ]
        == 4
    )
    samples = (work / "results" / "lovecraft" / "samples.md").read_text()
    heldout = [json.loads(line) for line in SAMPLE_HELDOUT.read_text().splitlines() if line.strip()]
    assert samples.count("\n## ") == 2
    assert f"## 1. {heldout[0]['instruction']}" in samples and heldout[0]["input"] in samples
    assert "held out of training" in samples


def test_nothing_to_do_when_up_to_date(built):
    repo, work, cfg = built
    proc = snakemake(repo, work, "lovecraft_mlx", "-n", configfile=cfg)
    assert planned_jobs(proc) == {}, proc.stdout


def test_author_change_rebuilds_only_metadata(built):
    repo, work, _ = built
    cfg = config(work / "lora_adapters", author="Clark Ashton Smith")  # another file, same workdir
    proc = snakemake(repo, work, "lovecraft_mlx", "-n", configfile=cfg)
    assert planned_jobs(proc) == {"metadata": 1, "report_pages": 1, "lovecraft_mlx": 1}, proc.stdout


def test_a_threshold_edit_recomputes_no_loss(built):
    """fidelity.threshold_percent is read by the verdict (metadata) alone: no loss is measured again."""
    repo, work, _ = built
    cfg = config(work / "lora_adapters", fidelity={"threshold_percent": 3})
    proc = snakemake(repo, work, "lovecraft_mlx", "-n", configfile=cfg)
    assert planned_jobs(proc) == {"metadata": 1, "report_pages": 1, "lovecraft_mlx": 1}, proc.stdout


def test_the_bundles_losses_are_measured_and_in_metadata(built):
    _, work, _ = built
    losses = json.loads((work / "results/lovecraft/fidelity/losses.json").read_text())
    held_out = (work / "results/lovecraft/data/eval.jsonl").read_text().splitlines()
    assert losses["examples"] == len(held_out) > 0 and losses["response_tokens"] > 0
    for key in ("base_4bit_loss", "bundle_loss", "unquantised_adapter_loss"):
        assert losses[key] > 0.1, losses  # the tiny model's untrained loss: far from zero
    fidelity = json.loads((work / "lora_adapters/lovecraft_mlx/metadata.json").read_text())["fidelity"]
    assert fidelity["pod_loss"] is None and fidelity["reference"] == "the unquantised base + adapter here"
    assert fidelity["bundle_loss"] == pytest.approx(losses["bundle_loss"], abs=1e-6)
    assert fidelity["sentence"]


def plan_after_appending(built, module: str, line: str):
    """The dry run's plan with `line` appended to <module> (put back afterwards)."""
    repo, work, cfg = built
    script = repo / module
    original = script.read_text()
    script.write_text(original + f"\n{line}\n")
    try:
        return snakemake(repo, work, "lovecraft_mlx", "-n", configfile=cfg)
    finally:
        script.write_text(original)


def test_converter_edit_reconverts_and_nothing_else(built):
    """The converter's code is a param of mlx_adapter only: an edit reconverts, re-samples and
    measures the new adapter's loss again (so the verdict in metadata.json is of this adapter)."""
    proc = plan_after_appending(built, "src/lora_style/mlx/convert.py", "CONVERTER_EDIT = 1")
    assert planned_jobs(proc) == {
        "mlx_adapter": 1,
        "samples": 1,
        "fidelity_losses": 1,
        "metadata": 1,
        "report_pages": 1,
        "lovecraft_mlx": 1,
    }, proc.stdout


@pytest.mark.parametrize(
    "module",
    [
        "src/lora_style/mlx/convert.py",
        "src/lora_style/mlx/conversion_plan.py",
        "src/lora_style/mlx/fidelity.py",
        "src/lora_style/safetensors_io.py",
        "src/lora_style/fileio.py",
        "src/lora_style/training/remote_train.py",
        "src/lora_style/training/launch.py",
        "src/lora_style/training/lib.sh",
        "scripts/convert_peft_to_mlx.py",
    ],
)
def test_a_comment_in_a_script_plans_nothing(built, module):
    """Code comments rebuild nothing, the converter's included."""
    proc = plan_after_appending(built, module, "# a comment")
    assert planned_jobs(proc) == {}, proc.stdout


def test_the_bundle_help_says_where_everything_is_and_its_command_generates(built):
    """The block `make demo` ends with: its paths exist, and its generate command runs as printed."""
    repo, work, _ = built
    proc = subprocess.run(
        [
            sys.executable,
            str(repo / "scripts" / "bundle_help.py"),
            "--workdir",
            str(work),
            "--run",
            "lovecraft",
            "--report",
            str(work / "report.html"),
            "--prompts",
            str(SAMPLE_HELDOUT),
        ],
        capture_output=True,
        text=True,
        cwd=work.parent,
        check=True,
    )
    text = proc.stdout
    assert "lovecraft: the MLX bundle is built" in text and "report.html  (open it in a browser)" in text
    for rel in ("lora_adapters/lovecraft_mlx", "models/tiny-qwen2-4bit-mlx", "results/lovecraft/samples.md"):
        assert rel in text and (work / rel).exists()
    assert "rsync -aR" in text and "you@your-mac:lora-bundle/" in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  cd "))
    command = "\n".join(lines[start : start + 2])  # the printed command and its continuation
    run = subprocess.run(
        ["sh", "-c", command + " --max-tokens 8"],
        capture_output=True,
        text=True,
        cwd=work.parent,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    heldout = json.loads(SAMPLE_HELDOUT.read_text().splitlines()[0])
    assert heldout["instruction"] in run.stderr  # the rendered prompt, logged
    assert run.stdout.strip()
