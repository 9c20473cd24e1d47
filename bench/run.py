"""`make bench`: the graph's own work against its floors, measured in one run.

    .venv/bin/python bench/run.py                  # every row; writes bench/results.md
    .venv/bin/python bench/run.py --only validation conversion --repeat 5

Each figure is a median of --repeat runs, interleaved with its floor (bare `json.loads` of
each line, `cp` of the same file, `snakemake --version`) timed in the same run, so the ratios
hold on a slower or busier machine; the absolute seconds do not. Inputs are made in a
temporary folder (bench/inputs.py). It reports and never fails on a missed target: it is not
part of `make test` and gates nothing. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rows as bench_rows  # noqa: E402
from measure import say  # noqa: E402
from rows import REPO, Row  # noqa: E402

SECTIONS = {
    "validation": lambda tmp, n: bench_rows.validation_rows(tmp, n),
    "conversion": lambda tmp, n: bench_rows.conversion_rows(tmp, n),
    "startup": lambda tmp, n: bench_rows.startup_rows(tmp, n),
    "ssh": lambda tmp, n: __import__("ssh").ssh_rows(tmp),
}
HEADER = ["what", "measured", "floor (same run)", "ratio", "peak memory", "target", "met"]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median)")
    parser.add_argument("--output", default=str(REPO / "bench" / "results.md"))
    parser.add_argument("--workdir", help="where the temporary inputs go (default: $TMPDIR)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    rows: list[Row] = []
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-", dir=args.workdir) as tmp:
            try:
                rows += SECTIONS[name](Path(tmp), args.repeat)
            except Exception as exc:  # noqa: BLE001 (a benchmark reports; the others still run)
                traceback.print_exc()
                rows.append(Row(f"{name}: failed", str(exc).splitlines()[0][:200], "-", None, "-"))
    minutes = (time.monotonic() - started) / 60
    cpu = f"{platform.machine()}, {__import__('os').cpu_count()} cores"
    text = (
        f"# make bench\n\n{time.strftime('%Y-%m-%d %H:%M')} on {cpu}, {minutes:.1f} min; "
        f"medians of {args.repeat} runs (start-up: {args.repeat + 2}), each against its floor "
        "timed in the same run. Code measured: "
        f"{REPO}.\n\n{table(rows)}\n"
    )
    print(text)
    Path(args.output).write_text(text)
    say(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
