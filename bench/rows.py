"""The rows of `make bench` that run on this machine alone: validation, token counting,
conversion, and the graph's start-up (no-op run and dry run). Each returns Row objects: a
figure, the floor it is compared with (timed in the same run), the ratio and the target."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import inputs
from measure import MiB, alternate, python, run, say

REPO = inputs.REPO
SCRIPTS = REPO / "scripts"
JSON_FLOOR = "import json, sys\nfor line in open(sys.argv[1], 'rb'):\n    json.loads(line)\n"
# The tokenizer alone over the same text (each line's three strings, no template), in the
# validator's batches: what token counting costs before any of our code runs.
TOKENIZER_FLOOR = (
    "import json, sys\n"
    "from tokenizers import Tokenizer\n"
    "tok = Tokenizer.from_file(sys.argv[2])\n"
    "batch = []\n"
    "for line in open(sys.argv[1], 'rb'):\n"
    "    batch.append(' '.join(json.loads(line).values()))\n"
    "    if len(batch) == 2000:\n"
    "        tok.encode_batch_fast(batch, add_special_tokens=False); batch = []\n"
    "tok.encode_batch_fast(batch, add_special_tokens=False)\n"
)


@dataclass
class Row:
    what: str
    measured: str
    floor: str
    ratio: float | None
    target: str
    memory: str = ""
    met: bool | None = None
    cpu_ratio: float | None = None  # the same in CPU seconds: steadier on a shared machine

    def cells(self) -> list[str]:
        ratio = (
            "-"
            if self.ratio is None
            else (f"{self.ratio:.2f}x" if self.ratio >= 0.1 else f"{self.ratio:.4f}x")
        )
        if self.cpu_ratio is not None:
            ratio += f" (CPU {self.cpu_ratio:.2f}x)"
        verdict = {True: "yes", False: "**no**", None: "-"}[self.met]
        return [self.what, self.measured, self.floor, ratio, self.memory, self.target, verdict]


def _validate(data: Path, out: Path, *extra: str):
    return lambda: run(
        python(
            str(SCRIPTS / "validate_dataset.py"),
            str(data),
            "--output",
            str(out / "train.jsonl"),
            "--report",
            str(out / "validation.json"),
            *extra,
        )
    )


def validation_rows(tmp: Path, repeat: int, lines: int = 100_000) -> list[Row]:
    data = tmp / "data.jsonl"
    size = inputs.write_jsonl(data, lines)
    tok = inputs.build_tokenizer(data, tmp / "tokenizer")
    long_line = tmp / "long.jsonl"
    long_size = inputs.write_long_line(long_line)
    out = tmp / "validated"
    floor = lambda path=data: run(python("-c", JSON_FLOOR, str(path)))  # noqa: E731
    with_tokens = ("--tokenizer", str(tok), "--cutoff-len", "2048")
    say(f"validation: {lines} lines, {size / 1e6:.0f} MB; floor, plain, with token counts")
    s = alternate(
        repeat,
        floor=floor,
        plain=_validate(data, out),
        tokens=_validate(data, out, *with_tokens),
        tokenizer=lambda: run(python("-c", TOKENIZER_FLOOR, str(data), str(tok / "tokenizer.json"))),
    )
    report = json.loads((out / "validation.json").read_text())
    say(
        f"  floor {s['floor'].spread()} | plain {s['plain'].spread()} | tokens "
        f"{s['tokens'].spread()} | tokenizer alone {s['tokenizer'].spread()}"
    )
    say("validation: one 50 MB line with token counts")
    long = alternate(
        max(1, repeat - 1),
        floor=lambda: floor(long_line),
        tokens=_validate(long_line, tmp / "validated_long", *with_tokens),
    )
    f, p, t, lf, lt = (s["floor"], s["plain"], s["tokens"], long["floor"], long["tokens"])
    mb = f"{lines // 1000}k lines ({size / 1e6:.0f} MB)"
    return [
        Row(
            f"validation, {mb}",
            f"{p.seconds:.2f} s",
            f"json.loads of each line {f.seconds:.2f} s",
            p.seconds / f.seconds,
            "<= 3x; peak < 200 MiB, flat in file size",
            f"{p.peak_rss / MiB:.0f} MiB ({p.peak_rss / size:.2f}x the file)",
            p.seconds / f.seconds <= 3 and p.peak_rss < 200 * MiB,
            p.cpu / f.cpu,
        ),
        Row(
            f"validation with token counts, {mb}; {report.get('over_cutoff_len', '?')} over cutoff_len 2048",
            f"{t.seconds:.2f} s",
            f"json.loads {f.seconds:.2f} s (the "
            f"tokenizer alone, no template: {s['tokenizer'].seconds:.2f} s = "
            f"{s['tokenizer'].seconds / f.seconds:.0f}x)",
            t.seconds / f.seconds,
            "<= 30x; peak < 1 GiB",
            f"{t.peak_rss / MiB:.0f} MiB",
            t.seconds / f.seconds <= 30 and t.peak_rss < 1024 * MiB,
            t.cpu / f.cpu,
        ),
        Row(
            f"one {long_size / 1e6:.0f} MB line, with token counts",
            f"{lt.seconds:.2f} s",
            f"json.loads {lf.seconds:.2f} s",
            lt.seconds / lf.seconds,
            "peak < 1 GiB",
            f"{lt.peak_rss / MiB:.0f} MiB",
            lt.peak_rss < 1024 * MiB,
            lt.cpu / lf.cpu,
        ),
    ]


def _convert(folder: Path, out: Path):
    def call():
        if out.exists():
            shutil.rmtree(out)
        return run(
            python(
                str(SCRIPTS / "convert_peft_to_mlx.py"),
                "--input",
                str(folder / "peft"),
                "--output",
                str(out),
                "--base",
                str(folder / "base"),
            )
        )

    return call


def conversion_rows(tmp: Path, repeat: int) -> list[Row]:
    rows = []
    # The interpreter: Python with what the converter imports (numpy, mlx, mlx-lm's Qwen2 and
    # LoRA layers, as its check imports them), doing nothing.
    imports = "import numpy, mlx.core, mlx.nn;import lora_style.mlx.convert, mlx_lm.utils, mlx_lm.tuner.utils"
    interpreter = max(run(python("-c", imports)).peak_rss for _ in range(2))
    for model in ("14B", "32B"):
        folder = tmp / f"adapter-{model}"
        sizes = inputs.write_adapter(folder, model)
        src = folder / "peft" / "adapter_model.safetensors"
        say(f"conversion: Qwen2.5-{model} shapes, rank 64, {sizes['bytes'] / 2**30:.2f} GiB; cp, convert")
        copy = tmp / "copy.safetensors"
        s = alternate(
            repeat,
            cp=lambda src=src, copy=copy: run(["cp", str(src), str(copy)]),
            convert=_convert(folder, tmp / f"mlx-{model}"),
        )
        say(f"  cp {s['cp'].spread()} | convert {s['convert'].spread()}")
        written = (tmp / f"mlx-{model}" / "adapters.safetensors").stat().st_size
        if abs(written - sizes["bytes"]) > 1 << 20:
            raise RuntimeError(f"the conversion wrote {written} bytes of {sizes['bytes']}")
        budget = interpreter + 2 * sizes["largest"]
        c, cp = s["convert"], s["cp"]
        rows.append(
            Row(
                f"conversion, Qwen2.5-{model} shapes ({sizes['bytes'] / 2**30:.2f} GiB fp32)",
                f"{c.seconds:.2f} s",
                f"cp {cp.seconds:.2f} s",
                c.seconds / cp.seconds,
                "<= 2x; peak < 2 x largest tensor + interpreter",
                f"{c.peak_rss / MiB:.0f} MiB (budget {budget / MiB:.0f}: "
                f"{interpreter / MiB:.0f} + 2 x {sizes['largest'] / MiB:.1f})",
                c.seconds / cp.seconds <= 2 and c.peak_rss <= budget,
                c.cpu / cp.cpu,
            )
        )
        copy.unlink(missing_ok=True)
        shutil.rmtree(folder)
    return rows


def _snakemake(work: Path, config: Path, *args: str) -> list[str]:
    return python(
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        "2",
        f"--configfile={config}",
        *args,
    )


def demo_config(tmp: Path) -> Path:
    """config/demo.yaml with absolute paths, so the demo graph builds in any folder."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    run = cfg["runs"]["lovecraft"]
    for key in ("data", "heldout"):
        run[key] = str((REPO / "demo" / run[key]).resolve())
    cfg["pods"]["local"]["llamafactory_cli"] = str(REPO / ".venv-pod" / "bin" / "llamafactory-cli")
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def startup_rows(tmp: Path, repeat: int) -> list[Row]:
    """The demo's whole graph built once (local CPU), then a no-op run and a dry run of it."""
    work, config = tmp / "demo", demo_config(tmp)
    say("start-up: building the demo graph once (tiny model, local CPU; a few minutes)")
    run(_snakemake(work, config, "lovecraft_mlx"))
    version = lambda: run(python("-m", "snakemake", "--version"))  # noqa: E731
    noop = lambda: run(_snakemake(work, config, "lovecraft_mlx"))  # noqa: E731
    dry = lambda: run(_snakemake(work, config, "-n", "lovecraft_mlx"))  # noqa: E731
    s = alternate(repeat + 2, version=version, noop=noop, dry=dry)
    say(f"  --version {s['version'].spread()} | no-op {s['noop'].spread()} | -n {s['dry'].spread()}")
    plan = _snakemake(work, config, "-n", "lovecraft_mlx")
    import subprocess

    text = subprocess.run(plan, capture_output=True, text=True).stdout
    nothing = "Nothing to be done" in text or "nothing to be done" in text.lower()
    v = s["version"].seconds
    return [
        Row(
            f"no-op run ({'plans nothing' if nothing else 'PLANS JOBS'})",
            f"{s['noop'].seconds:.2f} s",
            f"snakemake --version {v:.2f} s",
            s["noop"].seconds / v,
            "<= 2x",
            met=s["noop"].seconds / v <= 2 and nothing,
            cpu_ratio=s["noop"].cpu / s["version"].cpu,
        ),
        Row(
            "dry run (-n) of the built graph",
            f"{s['dry'].seconds:.2f} s",
            f"snakemake --version {v:.2f} s",
            s["dry"].seconds / v,
            "<= 2x",
            met=s["dry"].seconds / v <= 2,
            cpu_ratio=s["dry"].cpu / s["version"].cpu,
        ),
    ]
