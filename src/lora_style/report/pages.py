"""A run's facts as readable HTML pages for `snakemake --report` (rules/report.smk).

    python -m lora_style.report.pages --run lovecraft \
        --validation results/lovecraft/data/validation.json \
        --launch results/lovecraft/train/launch.json --finished results/lovecraft/train/finished.json \
        --summary results/lovecraft/train/training_summary.json \
        --metadata lora_adapters/lovecraft_mlx/metadata.json --samples results/lovecraft/samples.md \
        --validation-page V.html --preflight-page P.html --training-page T.html \
        --metadata-page M.html --samples-page S.html

Snakemake's report shows images and HTML, and offers JSON only as a download: each page here
turns one of the run's records into tables, and what needs the user's attention (duplicates,
examples over cutoff_len, a failed check, a training cut by its budget) in a coloured line. A page
stands on its own (no scripts, no links out), so it reads the same in report.html and report.zip.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from html import escape
from pathlib import Path

from markdown_it import MarkdownIt

from lora_style.fileio import UserError, read_json_object, write_atomic
from lora_style.report.data_page import validation_page
from lora_style.report.html_parts import (
    code,
    duration,
    facts_table,
    fmt,
    grid,
    note,
    page,
    value_html,
    when,
)
from lora_style.report.outcome import fidelity_part, results_section
from lora_style.training.cost import Estimate


class ReportError(UserError):
    """A record the report reads is missing or unreadable; the message says which."""


def preflight_page(run: str, launch: dict) -> str:
    attempt = launch.get("attempt") or {}
    report = attempt.get("preflight")
    where = launch.get("where") or launch.get("pod") or "the pod"
    lead = (
        f"The checks on {escape(where)} (pod {code(launch.get('pod', '?'))}) before anything "
        "was uploaded or launched."
    )
    if not report:
        return page(
            f"{run}: preflight",
            lead,
            [
                note(
                    "info",
                    "This launch record holds no "
                    "preflight: the training was attached to, and its first launch is not on "
                    "record.",
                )
            ],
        )
    body = []
    failed = [c for c in report.get("checks", []) if not c.get("ok")]
    if failed:
        body.append(
            note("bad", f"{len(failed)} check(s) failed: " + escape(", ".join(c["name"] for c in failed)))
        )
    else:
        body.append(note("ok", f"All {len(report.get('checks', []))} checks passed."))
    if launch.get("action") == "attached":
        body.append(
            note(
                "info",
                "This run attached to a training launched earlier; these are the checks of that launch.",
            )
        )
    body.append("<h2>Checks</h2>")
    body.append(
        grid(
            ["check", "result", "detail"],
            [
                [
                    escape(c.get("name", "?")),
                    '<span class="yes">passed</span>' if c.get("ok") else '<span class="no">failed</span>',
                    escape(c.get("detail", "")),
                ]
                for c in report.get("checks", [])
            ],
        )
    )
    body.append("<h2>What it found</h2>")
    gpus = report.get("gpus") or []
    body.append(
        facts_table(
            {
                "GPUs": ", ".join(
                    f"{g.get('name', '?')} ({g.get('free_gb', 0):.0f} of {g.get('total_gb', 0):.0f} GB free)"
                    for g in gpus
                )
                or "none",
                "GPU memory the run needs (estimate, GB)": report.get("memory_estimate_gb"),
                "LLaMA-Factory": report.get("llamafactory_version"),
                "llamafactory-cli": report.get("llamafactory_cli"),
                "runs detached with": report.get("detach"),
                "run folders on the pod": report.get("remote_dir"),
                "launched at": attempt.get("launched_at"),
            }
        )
    )
    if attempt.get("setup"):
        body.append("<h2>Setup</h2>")
        body.append(value_html(attempt["setup"]))
    return page(f"{run}: preflight", lead, body)


def estimate_line(estimate: dict | None) -> str:
    """The plan's line (`N steps, ~H GPU-hours on ... = ~$X`), as `snakemake -n` printed it."""
    if not estimate:
        return "(not recorded)"
    try:
        return Estimate(
            **{f.name: estimate[f.name] for f in fields(Estimate) if f.name in estimate}
        ).line()  # older records lack the newer fields
    except (KeyError, TypeError):
        return fmt(estimate)


def bill_facts(bill: dict | None) -> dict:
    """What RunPod billed for the rented pod (its whole life, every run on it), if it was read."""
    if not bill:
        return {}
    return {
        "RunPod billed": (
            f"${bill['total_usd']:.2f} (GPU ${bill['gpu_usd']:.2f}, disk "
            f"${bill['disk_usd']:.2f}, CPU ${bill['cpu_usd']:.2f}) for pod "
            f"{', '.join(bill['pods'])} since {bill['from']}; read "
            f"{bill['read_at']}, billing can lag"
        )
    }


def training_page(
    run: str, summary: dict, finished: dict, launch: dict, overfitting_share: float = 0.1
) -> str:
    body = []
    total = summary.get("total_steps")
    step = summary.get("best_step")
    if summary.get("cut_by_budget"):
        body.append(
            note(
                "warn",
                "The training was stopped by its budget (max_hours / max_usd) "
                "before its last step; the adapter is the best checkpoint saved "
                "until then.",
            )
        )
    if summary.get("selected_by") == "min_eval_loss":
        chosen = (
            f"checkpoint-{step} of {total} steps: the lowest eval_loss, {fmt(summary.get('best_eval_loss'))}"
        )
    else:
        chosen = (
            f"checkpoint-{step} of {total} steps: the last one saved (no evaluation fell "
            "on a saved checkpoint)"
        )
    body.append(note("ok", escape(chosen)))
    body.append("<h2>Result</h2>")
    body.append(
        facts_table(
            {
                "steps trained": total,
                "chosen checkpoint": f"step {step}",
                "chosen by": {
                    "min_eval_loss": "the lowest eval_loss",
                    "last_checkpoint": "the last checkpoint",
                }.get(summary.get("selected_by"), summary.get("selected_by")),
                "eval_loss there": summary.get("best_eval_loss"),
                "status": "cut by the budget" if summary.get("cut_by_budget") else finished.get("status"),
                "run id": summary.get("run_id"),
                "LLaMA-Factory": summary.get("llamafactory_version"),
            }
        )
    )
    body.extend(results_section(summary, overfitting_share))
    body.append("<h2>Time and cost</h2>")
    used = summary.get("gpu_time") or finished.get("gpu_time") or {}
    gpu = "(not recorded)"
    if used.get("gpu_hours") is not None:
        gpus = int(used.get("gpus") or 1)
        gpu = f"{used['gpu_hours']:.4g} GPU-hours ({gpus} GPU{'s' * (gpus != 1)})"
    if used.get("usd") is not None:
        cost = f"${used['usd']:.2f} at ${used.get('usd_per_hour', 0):.2f}/h"
    elif used:
        cost = "no price known (set gpu_hourly_usd on the pod for a cost)"
    else:
        cost = "(not recorded)"
    body.append(
        facts_table(
            {
                "training wall time (all attempts)": duration(
                    summary.get("wall_time_s", finished.get("wall_time_s"))
                ),
                "GPU time": gpu,
                "cost": cost,
                "the plan said": estimate_line(summary.get("estimate") or launch.get("estimate")),
                **bill_facts(summary.get("runpod_bill")),
            }
        )
    )
    attempts = finished.get("attempts") or []
    body.append(f"<h2>Attempts ({len(attempts)})</h2>")
    if attempts:
        body.append(
            grid(
                ["#", "started", "ended", "from step", "exit code", "took"],
                [
                    [
                        str(i),
                        when(a.get("start")),
                        when(a.get("end")),
                        escape(fmt(a.get("from_step"))),
                        escape(fmt(a.get("rc"))),
                        duration(a["end"] - a["start"]) if a.get("end") and a.get("start") else "(unknown)",
                    ]
                    for i, a in enumerate(attempts, 1)
                ],
                numeric={0, 3, 4},
            )
        )
    else:
        body.append("<p>No attempts recorded.</p>")
    body.append("<h2>Where</h2>")
    body.append(
        facts_table(
            {
                "pod": launch.get("pod"),
                "machine": launch.get("where"),
                "executor": launch.get("executor"),
                "run folder": launch.get("run_dir") or finished.get("run_dir"),
                "launch": launch.get("action"),
                "finished at": finished.get("finished_at"),
            }
        )
    )
    return page(
        f"{run}: training",
        "The training on the pod: what was chosen, how long it took, "
        "what it cost. The loss curves are the other item of this section.",
        body,
    )


def metadata_page(run: str, metadata: dict, path: str) -> str:
    body = fidelity_part(metadata.get("fidelity"))
    body.append("<h2>metadata.json</h2>" if body else "")
    body.append(facts_table(metadata))  # the file's own keys: what a reader of it will see
    return page(
        f"{run}: the MLX bundle's metadata",
        f"{code(path)}, which travels with the adapter: who and what it was trained on, "
        "the prompt format inference must use, and how much of what the adapter learnt the "
        "4-bit bundle keeps.",
        body,
    )


def samples_page(run: str, markdown: str, path: str) -> str:
    if markdown.startswith("# "):  # its title: the page has its own
        markdown = markdown.partition("\n")[2]
    html = MarkdownIt("commonmark", {"html": True}).render(markdown)
    return page(
        f"{run}: samples",
        f"The adapter on a few prompts, in the training format ({code(path)}).",
        [f'<div class="samples">{html}</div>'],
    )


# ----------------------------------------------------------------------------------- command line


def _read(path: str, what: str) -> dict:
    return read_json_object(path, ReportError, what)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    for name, text in {
        "validation": "results/RUN/data/validation.json",
        "launch": "results/RUN/train/launch.json (its preflight, where it ran)",
        "finished": "results/RUN/train/finished.json (attempts, wall time)",
        "summary": "results/RUN/train/training_summary.json",
        "metadata": "lora_adapters/RUN_mlx/metadata.json",
        "samples": "results/RUN/samples.md",
    }.items():
        parser.add_argument(f"--{name}", required=True, help=text)
    for name in ("validation", "preflight", "training", "metadata", "samples"):
        parser.add_argument(f"--{name}-page", required=True, help=f"the {name} page to write")
    parser.add_argument(
        "--overfitting-share",
        type=float,
        default=0.1,
        help="results table: note eval loss this share above its minimum as overfitting",
    )
    args = parser.parse_args(argv)
    try:
        launch = _read(args.launch, "the launch record")
        pages = {
            args.validation_page: validation_page(args.run, _read(args.validation, "the validation report")),
            args.preflight_page: preflight_page(args.run, launch),
            args.training_page: training_page(
                args.run,
                _read(args.summary, "the training summary"),
                _read(args.finished, "the finish record"),
                launch,
                args.overfitting_share,
            ),
            args.metadata_page: metadata_page(
                args.run, _read(args.metadata, "the bundle's metadata"), args.metadata
            ),
        }
        try:
            markdown = Path(args.samples).read_text(encoding="utf-8")
        except OSError as exc:
            raise ReportError(f"{args.samples}: cannot read it ({exc.strerror})") from None
        pages[args.samples_page] = samples_page(args.run, markdown, args.samples)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, html in pages.items():
        write_atomic(path, html.encode("utf-8"))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
