"""The 32B profile's 4-bit path on one GPU, as one check: train, measure, extrapolate.

    bench/gpu/check.sh [--cpu] [--blocks 4 8] [--steps 20]      (installs .whl/ first)

For each block count N: a random model with Qwen2.5-32B's shapes and N of its 64 blocks is built
on the machine (make_model.py); the run's train.yaml is the project's, generated from the
qwen25_32b_a100 profile by train_yaml.train_args with only the model, the dataset, max_steps and
eval/save steps changed; the run folder is staged by launch.upload (run.sh, train.env, data) and
preflight's probe (probe.sh) is asked about the machine, as before a pod run; then run.sh trains
with the real `llamafactory-cli train`, as launch.sh starts it on a pod. A hook (hook/) records
each optimizer step's time, tokens and torch.cuda's peak memory; nvidia-smi is sampled beside it.

Two block counts give a line per figure (fixed part + per block) that is extrapolated to 64 blocks
and set beside preflight's memory estimate for Qwen2.5-32B and the guide's 1.4 steps/min on an
A100. Everything lands in OUT (default bench/gpu/out): summary.md (the table, printed last),
summary.json, check.log (check.sh's copy of this output), logs.tar.gz (every log and figure).

--cpu is the rehearsal on a machine without CUDA: the same steps, a model shrunk by --shrink,
and `use_cpu: true` added to the profile (quantization_bit 4, bf16 and paged_adamw_32bit stay:
bitsandbytes' CPU backend runs them, slowly; what only CUDA has is its kernels and paging).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

from lora_style.config.train_yaml import train_args, write_yaml  # noqa: E402
from lora_style.data.dataset_info import dataset_info  # noqa: E402
from lora_style.data.validate import validate_file  # noqa: E402
from lora_style.tiny_model import corpus_texts  # noqa: E402
from lora_style.training import launch, preflight  # noqa: E402
from lora_style.training.best_checkpoint import select_checkpoint  # noqa: E402
from lora_style.training.estimate import GB, QWEN25, estimate_memory  # noqa: E402
from lora_style.training.executor import LocalExecutor  # noqa: E402
from lora_style.training.settings import PodSettings  # noqa: E402

PROFILE = "qwen25_32b_a100"
RUN = "gpucheck"
FULL_BLOCKS = 64
# The guide's run (config/rates.yaml): 1.4 optimizer steps a minute on one A100 SXM 80GB, each
# step 16 packed sequences of 2048 tokens: about 765 tokens a second.
GUIDE_STEPS_PER_MIN = 1.4
GUIDE_TOKENS_PER_STEP = 16 * 2048
GUIDE_TOKENS_PER_S = GUIDE_STEPS_PER_MIN * GUIDE_TOKENS_PER_STEP / 60
# What --cpu adds: transformers refuses bf16 without a GPU unless told to train on the CPU. The
# rest of the profile runs there as it is: bitsandbytes 0.50 quantises to NF4 on a CPU too, bf16
# is the CPU's autocast, and paged_adamw_32bit falls back to unpaged AdamW (it warns).
CPU_OVERRIDES = {"use_cpu": True}
WARMUP_STEPS = 2  # first steps (kernel selection, allocator growth), left out of the medians


def say(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------------- arithmetic


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of value against block count; two counts at least."""
    xs = sorted(points)
    if len(xs) < 2:
        raise ValueError("a line needs two block counts")
    mx = statistics.fmean(xs)
    my = statistics.fmean(points[x] for x in xs)
    slope = sum((x - mx) * (points[x] - my) for x in xs) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def extrapolate(points: dict[int, float], blocks: int = FULL_BLOCKS) -> dict:
    """The figure at `blocks` blocks from a line through the measured ones: the part every model
    has (embedding, LM head, logits, CUDA context) plus `blocks` times one block's part."""
    intercept, slope = fit_line(points)
    return {"fixed": intercept, "per_block": slope, "at": blocks, "value": intercept + slope * blocks}


def step_figures(records: list[dict]) -> dict:
    """Medians over the optimizer steps after the warm-up: seconds, tokens, tokens/s; peaks."""
    steps = [r for r in records if r.get("event") == "step"]
    timed = [r for r in steps if r["step"] > WARMUP_STEPS] or steps
    seconds = statistics.median(r["end"] - r["begin"] for r in timed) if timed else None
    tokens = statistics.median(r["tokens"] for r in timed) if timed else None
    real = [r["real_tokens"] for r in timed if r.get("real_tokens") is not None]
    peaks = {}
    for key in ("max_reserved", "max_allocated", "max_rss"):
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            peaks[key] = max(values)
    return {
        "steps": len(steps),
        "step_s": seconds,
        "tokens_per_step": tokens,
        "real_tokens_per_step": statistics.median(real) if real else None,
        "tokens_per_s": tokens / seconds if seconds and tokens else None,
        "steps_per_min": 60 / seconds if seconds else None,
        **peaks,
    }


def nvidia_smi_peak(csv_path: Path) -> float | None:
    """Largest memory.used (MiB) in the sampler's CSV, in GB (1e9 bytes)."""
    if not csv_path.is_file():
        return None
    used = []
    for line in csv_path.read_text(errors="replace").splitlines()[1:]:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) > 2 and parts[2].isdigit():
            used.append(int(parts[2]))
    return max(used) * 2**20 / GB if used else None


# ------------------------------------------------------------------------------------- the data


def make_data(path: Path, tokens: int, seed: int = 0) -> int:
    """Alpaca-format examples of random words of the sample data, about `tokens` tokens in all
    (the tiny tokenizer is word-level on these words: about a token a word). Returns the count."""
    import random

    rng = random.Random(seed)
    words = sorted(
        {
            w
            for text in corpus_texts([str(ROOT / "data/training/lovecraft/train_sft.jsonl")])
            for w in text.split()
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    count = written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < tokens:
            length = rng.randint(300, 900)
            example = {
                "instruction": "Rewrite the following passage in the style of H. P. Lovecraft.",
                "input": " ".join(rng.choices(words, k=40)),
                "output": " ".join(rng.choices(words, k=length)),
            }
            f.write(json.dumps(example) + "\n")
            written += length + 40 + 30  # the template's tokens, roughly
            count += 1
    return count


# ------------------------------------------------------------------------------ one block count


def build_args(model_dir: Path, steps: int, every: int, cpu: bool) -> dict:
    """The run's training arguments, as the graph builds them: the profile plus overrides."""
    overrides = {
        "max_steps": steps,
        "eval_steps": every,
        "save_steps": every,
        **(CPU_OVERRIDES if cpu else {}),
    }
    return train_args(RUN, {"profile": PROFILE, "base_model": str(model_dir), "overrides": overrides})


class Sampler:
    """nvidia-smi's own view of the GPU every half second, to a CSV, while a training runs."""

    def __init__(self, csv_path: Path):
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.file = csv_path.open("w")
            self.proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=timestamp,index,memory.used,memory.total,"
                    "utilization.gpu,power.draw,clocks.sm",
                    "--format=csv,nounits",
                    "-lms",
                    "500",
                ],
                stdout=self.file,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.file.close()


def run_blocks(blocks: int, ns, work: Path, logs: Path, data: Path, examples: int) -> dict:
    result: dict = {"blocks": blocks}
    model_dir = work / f"model-{blocks}"
    shutil.rmtree(model_dir, ignore_errors=True)
    say(f"\n== {blocks} blocks: building the model on {ns.device}")
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "make_model.py"),
            "--blocks",
            str(blocks),
            "--output",
            str(model_dir),
            "--device",
            ns.device,
            "--shrink",
            str(ns.shrink),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        say(proc.stdout + proc.stderr)
        raise SystemExit(f"error: make_model.py failed for {blocks} blocks")
    result["model"] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["model_s"] = round(time.monotonic() - t0, 1)
    say(
        f"   {result['model']['params'] / 1e6:,.0f} M parameters, "
        f"{result['model']['bytes_on_disk'] / GB:.1f} GB on disk, {result['model_s']} s"
    )

    # The run's files, as the graph writes them, and its folder, as launch.py stages it.
    args = build_args(model_dir, ns.steps, ns.every, ns.cpu)
    inputs = work / f"inputs-{blocks}"
    inputs.mkdir(parents=True, exist_ok=True)
    write_yaml(args, str(inputs / "train.yaml"))
    (inputs / "dataset_info.json").write_text(json.dumps(dataset_info(RUN), indent=2))
    shutil.copy(inputs / "train.yaml", logs / f"train-{blocks}.yaml")
    settings = PodSettings(
        name="gpucheck", executor="local", remote_dir=str(work / "pod"), llamafactory_cli=ns.cli
    )
    ex = LocalExecutor(settings, work)
    files = launch.RunFiles.load(
        RUN, str(inputs / "train.yaml"), str(data), str(inputs / "dataset_info.json")
    )
    run_dir = work / "pod" / files.run_id
    shutil.rmtree(run_dir, ignore_errors=True)

    # Preflight's probe against this machine: nvidia-smi, llamafactory-cli, bitsandbytes; judged
    # against the profile's own arguments (on a CPU too, where its GPU check must then fail).
    real = build_args(model_dir, ns.steps, ns.every, cpu=False)
    probe = preflight.probe(ex, settings.remote_dir, ns.cli, preflight.run_packages(real))
    report = preflight.evaluate(probe.facts, real, settings.name, examples, settings=settings)
    (logs / f"probe-{blocks}.txt").write_text(probe.text + probe.err)
    result["preflight"] = report.as_dict()
    for check in report.checks:
        say(f"   preflight: {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    launch.upload(ex, files, str(run_dir), settings)

    # run.sh as launch.sh starts it on a pod (a session of its own), in the foreground here.
    steps_file = logs / f"steps-{blocks}.jsonl"
    steps_file.unlink(missing_ok=True)
    env = dict(
        os.environ,
        GPU_CHECK_STEPS=str(steps_file),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE / "hook"), os.environ.get("PYTHONPATH")) if p),
    )
    sampler = Sampler(logs / f"nvidia-smi-{blocks}.csv")
    say(f"   training: sh {run_dir}/run.sh {ns.cli}")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["sh", str(run_dir / "run.sh"), ns.cli], env=env, start_new_session=True, timeout=ns.train_timeout
        )
        result["exit_code"] = proc.returncode
    except subprocess.TimeoutExpired:
        result["exit_code"] = "timeout"
    finally:
        sampler.stop()
    result["train_wall_s"] = round(time.monotonic() - t0, 1)
    for name in ("train.log", "attempts.log", "train.env"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, logs / f"{name.split('.')[0]}-{blocks}.{name.split('.')[1]}")
    for name in ("trainer_log.jsonl", "trainer_state.json", "all_results.json"):
        if (run_dir / "output" / name).is_file():
            shutil.copy(run_dir / "output" / name, logs / f"{Path(name).stem}-{blocks}{Path(name).suffix}")

    records = (
        [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.is_file() else []
    )
    result.update(step_figures(records))
    result["nvidia_smi_peak_gb"] = nvidia_smi_peak(logs / f"nvidia-smi-{blocks}.csv")
    begin = next((r for r in records if r["event"] == "train_begin"), None)
    result["load_peak_reserved"] = begin.get("max_reserved") if begin else None
    result["evaluations"] = {
        r["step"]: r["metrics"].get("eval_loss") for r in records if r["event"] == "evaluate"
    }
    checkpoints = sorted(
        int(p.name.split("-")[1])
        for p in (run_dir / "output").glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )
    result["checkpoints"] = checkpoints
    state = run_dir / "output" / "trainer_state.json"
    if checkpoints and state.is_file():
        chosen = select_checkpoint(json.loads(state.read_text())["log_history"], checkpoints)
        result["best_checkpoint"] = {
            "step": chosen.step,
            "eval_loss": chosen.eval_loss,
            "selected_by": chosen.selected_by,
        }
    # What preflight estimates for this very model (from its config.json, as for a local base).
    result["estimate_gb"] = report.memory.total if report.memory else None
    if not ns.keep_models:
        shutil.rmtree(model_dir, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------ the whole


def machine_facts(cli: str) -> dict:
    facts = {"python": sys.version.split()[0], "platform": platform.platform(), "cli": cli}
    from importlib import metadata

    for name in (
        "torch",
        "transformers",
        "accelerate",
        "peft",
        "trl",
        "datasets",
        "tokenizers",
        "bitsandbytes",
        "llamafactory",
        "huggingface_hub",
        "numpy",
        "pandas",
        "fsspec",
    ):
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = None
    try:
        import torch

        facts["cuda"] = torch.version.cuda
        facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError as exc:
        facts["torch_error"] = str(exc)
    return facts


def bnb_selftest(cpu: bool) -> dict:
    """bitsandbytes' NF4 layer and paged AdamW on this machine, against a bf16 reference."""
    code = r"""
import json, torch, bitsandbytes as bnb
out = {"version": bnb.__version__}
torch.manual_seed(0)
dev = "cpu" if CPU else "cuda"
w = torch.randn(4096, 5120) * 0.02
layer = bnb.nn.Linear4bit(5120, 4096, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
layer.weight = bnb.nn.Params4bit(w.to(torch.bfloat16), requires_grad=False, quant_type="nf4")
layer = layer.to(dev)
x = torch.randn(64, 5120, device=dev, dtype=torch.bfloat16)
y = layer(x).float()
deq = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
ref = x.float() @ deq.t()
out["nf4_vs_dequantized"] = ((y - ref).norm() / ref.norm()).item()
out["nf4_vs_bf16_weights"] = ((y - x.float() @ w.to(dev).t()).norm() / ref.norm()).item()
p = torch.nn.Parameter(torch.randn(1024, 1024, device=dev))
opt = bnb.optim.PagedAdamW32bit([p], lr=1e-3)  # on a CPU: unpaged, with a warning
p.grad = torch.randn_like(p)
before = p.detach().clone()
opt.step()
out["paged_adamw_max_change"] = (p.detach() - before).abs().max().item()  # lr: about 1e-3
print(json.dumps(out))
""".replace("CPU", "True" if cpu else "False")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        return {"error": (proc.stdout + proc.stderr).strip()[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(results: list[dict], facts: dict, args_full: dict, cpu: bool) -> dict:
    full = estimate_memory(QWEN25["32"], args_full)
    summary = {
        "facts": facts,
        "cpu_rehearsal": cpu,
        "runs": results,
        "preflight_estimate_64_blocks_gb": round(full.total, 2),
        "preflight_estimate_64_blocks": full.describe(),
        "guide": {
            "steps_per_min": GUIDE_STEPS_PER_MIN,
            "tokens_per_s": round(GUIDE_TOKENS_PER_S, 1),
            "gpu": "A100 SXM 80GB",
        },
    }
    usable = [r for r in results if r.get("step_s")]
    if len({r["blocks"] for r in usable}) >= 2:
        memory_key = "max_reserved" if all(r.get("max_reserved") for r in usable) else "max_rss"
        memory = extrapolate({r["blocks"]: r[memory_key] / GB for r in usable})
        step = extrapolate({r["blocks"]: r["step_s"] for r in usable})
        tokens = statistics.median(r["tokens_per_step"] for r in usable)
        estimate = extrapolate({r["blocks"]: r["estimate_gb"] for r in usable})
        summary["at_64_blocks"] = {
            "memory_key": memory_key,
            "memory_gb": memory,
            "step_s": step,
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / step["value"],
            "steps_per_min": 60 / step["value"],
            "steps_per_hour": 3600 / step["value"],
            "estimate_line_gb": estimate,
            "memory_vs_estimate": memory["value"] / full.total,
            "speed_vs_guide": (tokens / step["value"]) / GUIDE_TOKENS_PER_S,
            # A line that falls with more blocks is noise (a shared CPU), not a figure.
            "memory_line_ok": memory["per_block"] > 0,
            "step_line_ok": step["per_block"] > 0,
        }
    return summary


def table(summary: dict) -> str:
    def num(value, fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value)

    lines = [
        f"# GPU check ({'CPU rehearsal' if summary['cpu_rehearsal'] else summary['facts'].get('gpu')})",
        "",
        "| blocks | exit | steps | s/step | tokens/step | tokens/s | peak GB (cuda reserved; CPU: RSS) | "
        "nvidia-smi peak GB | preflight estimate GB | eval_loss | checkpoints |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        peak = r.get("max_reserved", r.get("max_rss"))
        evals = ", ".join(f"{k}: {v:.3f}" for k, v in r.get("evaluations", {}).items() if v is not None)
        lines.append(
            f"| {r['blocks']} | {r.get('exit_code')} | {r.get('steps')} | {num(r.get('step_s'))} | "
            f"{num(r.get('tokens_per_step'), '{:.0f}')} | {num(r.get('tokens_per_s'), '{:.0f}')} | "
            f"{num(peak and peak / GB)} | {num(r.get('nvidia_smi_peak_gb'))} | "
            f"{num(r.get('estimate_gb'))} | {evals or '-'} | {r.get('checkpoints')} |"
        )
    full = summary.get("at_64_blocks")
    lines.append("")
    if full:
        m, s = full["memory_gb"], full["step_s"]
        lines.append("At 64 blocks (line through the block counts; fixed + per block x 64):")
        if m["per_block"] > 0:
            lines.append(
                f"- memory ({full['memory_key']}): {m['fixed']:.2f} + {m['per_block']:.3f} x 64 = "
                f"**{m['value']:.1f} GB**; preflight estimates {summary['preflight_estimate_64_blocks_gb']:.1f} GB "
                f"({full['memory_vs_estimate']:.2f}x): {summary['preflight_estimate_64_blocks']}"
            )
        else:
            lines.append(f"- memory: no usable line (per block {m['per_block']:.3f} GB: noise)")
        lines.append(
            f"- preflight's own line over these block counts: {full['estimate_line_gb']['fixed']:.2f} + "
            f"{full['estimate_line_gb']['per_block']:.3f} x 64 GB"
        )
        if s["per_block"] > 0:
            lines.append(
                f"- step: {s['fixed']:.2f} + {s['per_block']:.3f} x 64 = **{s['value']:.1f} s**, "
                f"{full['steps_per_min']:.2f} steps/min ({full['steps_per_hour']:.0f}/h), "
                f"{full['tokens_per_s']:.0f} tokens/s; the guide: {GUIDE_STEPS_PER_MIN} steps/min, "
                f"{GUIDE_TOKENS_PER_S:.0f} tokens/s on an A100 ({full['speed_vs_guide']:.2f}x)"
            )
        else:
            lines.append(
                f"- step: no usable line (per block {s['per_block']:.3f} s: timing noise, "
                "e.g. a shared CPU; rerun, or take block counts further apart)"
            )
    else:
        lines.append("No extrapolation: it needs two block counts that both trained.")
    bnb = summary.get("bitsandbytes")
    if bnb:
        lines.append(f"- bitsandbytes self-test: {json.dumps(bnb)}")
    return "\n".join(lines) + "\n"


def write_out(
    out: Path,
    logs: Path,
    results: list[dict],
    facts: dict,
    args_full: dict,
    cpu: bool,
    bnb: dict,
    started: float,
) -> str:
    """summary.json, summary.md and logs.tar.gz in OUT; returns the table."""
    summary = summarise(results, facts, args_full, cpu)
    summary["bitsandbytes"] = bnb
    summary["wall_s"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    text = table(summary) + f"\nWall time: {summary['wall_s']:.0f} s\n"
    (out / "summary.md").write_text(text)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the rehearsal: no CUDA, shrunk model")
    parser.add_argument("--blocks", type=int, nargs="+", help="block counts (GPU: 4 8; CPU: 1 2)")
    parser.add_argument("--steps", type=int, help="max_steps (GPU: 16; CPU: 4)")
    parser.add_argument("--every", type=int, help="eval_steps = save_steps (default: steps / 2)")
    parser.add_argument("--shrink", type=int, help="widths / K (GPU: 1; CPU: 40)")
    parser.add_argument("--cli", required=True, help="llamafactory-cli (check.sh: the installed one)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "out"))
    parser.add_argument("--work", default="/tmp/gpu-check", help="models, data, the run folders")
    parser.add_argument("--train-timeout", type=float, default=None, help="seconds per training")
    parser.add_argument("--keep-models", action="store_true")
    ns = parser.parse_args(argv)
    ns.device = "cpu" if ns.cpu else "cuda"
    ns.blocks = sorted(set(ns.blocks or ([1, 2] if ns.cpu else [4, 8])))
    ns.steps = ns.steps or (4 if ns.cpu else 16)
    ns.every = ns.every or max(1, ns.steps // 2)
    ns.shrink = ns.shrink or (40 if ns.cpu else 1)
    ns.train_timeout = ns.train_timeout or (900 if ns.cpu else 240)
    ns.cli = shutil.which(ns.cli) or ns.cli

    out, work = Path(ns.out), Path(ns.work)
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    facts = machine_facts(ns.cli)
    (logs / "machine.json").write_text(json.dumps(facts, indent=2))
    say("machine: " + json.dumps(facts))
    bnb = bnb_selftest(ns.cpu)
    say("bitsandbytes: " + json.dumps(bnb))

    # Enough packed sequences for every step and its evaluation share (val_size 0.05).
    args_full = build_args(Path("Qwen/Qwen2.5-32B"), ns.steps, ns.every, cpu=False)
    data = work / "data" / "train.jsonl"
    tokens = int(ns.steps * args_full["gradient_accumulation_steps"] * args_full["cutoff_len"] * 1.3)
    everything = work / "data" / "all.jsonl"
    make_data(everything, tokens)
    # The graph's own split (validate.py): train.jsonl and the held-out eval.jsonl beside it,
    # which train.yaml names as eval_dataset.
    split, _ = validate_file(
        str(everything),
        str(data),
        eval_output=str(data.with_name("eval.jsonl")),
        val_size=args_full["val_size"],
    )
    examples = split.examples - split.eval_examples
    say(f"data: {examples} examples, about {tokens} tokens")

    results = []
    for blocks in ns.blocks:
        results.append(run_blocks(blocks, ns, work, logs, data, examples))
        say("   " + json.dumps({k: v for k, v in results[-1].items() if k not in ("model", "preflight")}))
        # After every block count, so a call cut off at its time limit still brings figures back.
        text = write_out(out, logs, results, facts, args_full, ns.cpu, bnb, started)
    say("\n" + text)
    failed = [r["blocks"] for r in results if r.get("exit_code") != 0]
    if failed:
        say(f"training failed for {failed} blocks: see logs.tar.gz (train-N.log)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
