"""What a built run gives you, and how to use it: the block `make demo` ends with.

    python scripts/bundle_help.py --workdir demo --run lovecraft --report demo/report.html
    python scripts/bundle_help.py --run lovecraft            (a real run, in the project folder)

It reads the run's MLX bundle (lora_adapters/<run>_mlx/metadata.json names the 4-bit base model)
and its held-out prompts, and prints where everything is, the exact command that generates with
it here, and how to copy it to a Mac and generate there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

from lora_style.fileio import UserError, read_json_object
from lora_style.paths import REPO
from lora_style.prompt_format import load_template, render_prompt


def first_prompt(prompts: Path | None, fallback: str) -> str:
    """The guide's one-string form of the run's first held-out prompt."""
    if prompts and prompts.is_file():
        for line in prompts.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                return f"{row['instruction']} ### {row.get('input', '')}".strip(" #")
    return fallback


def next_run_advice(workdir: Path, run: str) -> str | None:
    """The results table's sentence for the next run (training_summary.json), if it has one."""
    path = workdir / "lora_adapters" / f"{run}_peft" / "training_summary.json"
    try:
        advice = json.loads(path.read_text(encoding="utf-8")).get("advice")
    except (OSError, ValueError, AttributeError):
        return None
    return advice if isinstance(advice, str) else None


def bundle_help(workdir: Path, run: str, report: Path | None, prompts: Path | None) -> str:
    adapter = Path("lora_adapters") / f"{run}_mlx"
    meta = read_json_object(
        workdir / adapter / "metadata.json", UserError, f"build the run first: snakemake {run}_mlx"
    )
    base = Path(meta["base_model"])
    if not (workdir / base).is_dir():
        raise UserError(
            f"{workdir / base}: the 4-bit base model named in {adapter}/metadata.json "
            f"is missing; build it: snakemake {run}_mlx"
        )
    python = shlex.quote(os.path.relpath(sys.executable, workdir))
    script = shlex.quote(os.path.relpath(REPO / "scripts" / "generate.py", workdir))
    prompt = shlex.quote(first_prompt(prompts, "Rewrite the following passage. ### The bus broke down."))
    here = "" if workdir.resolve() == Path.cwd().resolve() else f"cd {shlex.quote(str(workdir))} && "
    where = lambda path: shlex.quote(os.path.relpath(workdir / path))  # noqa: E731
    lines = [
        "",
        f"== {run}: the MLX bundle is built ==",
        f"  adapter     {where(adapter)}/  (adapters.safetensors, adapter_config.json, metadata.json)",
        f"  base model  {where(base)}/  (4-bit MLX)",
        f"  samples     {where(Path('results') / run / 'samples.md')}",
    ]
    if report:
        lines.append(f"  report      {shlex.quote(str(report))}  (open it in a browser)")
    advice = next_run_advice(workdir, run)
    if advice:
        lines.append(f"  next run    {advice}")
    fidelity = meta.get("fidelity") or {}
    if fidelity.get("sentence"):
        lines += ["", "What the bundle keeps (held-out loss, mlx-lm against the pod's evaluation):"]
        lines += [f"  {line}" for line in textwrap.wrap(fidelity["sentence"], 94)]
    lines += [
        "",
        "Generate with it here (the prompt is rendered exactly as training saw it):",
        f"  {here}{python} {script} --adapter-path {adapter} \\",
        f"      --prompt {prompt}",
        "",
        *mlx_lm_commands(workdir, run, adapter, base, prompt, here),
        "On a Mac with Apple silicon: copy the bundle, keeping its layout (metadata.json names the",
        "base model by its path inside it), set up this project's local side once, and generate:",
        f"  rsync -aR {shlex.quote(str(workdir))}/./{adapter} {shlex.quote(str(workdir))}/./{base} "
        "you@your-mac:lora-bundle/",
        "  # on the Mac, in a clone of this project (here ~/lora-style):",
        "  python3 -m venv .venv && .venv/bin/pip install -r requirements/local.txt \\",
        "      && .venv/bin/pip install --no-deps -e .",
        "  cd ~/lora-bundle && ~/lora-style/.venv/bin/python ~/lora-style/scripts/generate.py \\",
        f"      --adapter-path {adapter} --prompt {prompt}",
        "",
    ]
    return "\n".join(lines)


def mlx_lm_commands(
    workdir: Path, run: str, adapter: Path, base: Path, prompt: str, here: str = ""
) -> list[str]:
    """mlx-lm's own commands on the bundle, with the chat template that renders the training
    format (mlx/chat_template.py; its check says whether the base's own one does)."""
    check_path = workdir / "results" / run / "chat_template.json"
    if not (workdir / adapter / "chat_template.jinja").is_file() or not check_path.is_file():
        return []
    check = json.loads(check_path.read_text(encoding="utf-8"))
    instruction, _, input_ = shlex.split(prompt)[0].partition(" ### ")
    meta = read_json_object(workdir / adapter / "metadata.json", UserError)
    template = load_template(meta.get("prompt_format", {}).get("template", "qwen"))
    lines = [
        "With mlx-lm's own tools (an OpenAI-compatible server on 127.0.0.1:8080, and the CLI):",
        f"  {here}mlx_lm.server --model {base} --adapter-path {adapter} \\",
        f'      --chat-template "$(cat {adapter}/chat_template.jinja)" --port 8080',
    ]
    user = "\n".join(part for part in (instruction, input_) if part)
    if check.get("base_template_matches"):
        lines.append(
            f"  {here}mlx_lm.generate --model {base} --adapter-path {adapter} --prompt {shlex.quote(user)}"
        )
    else:
        text = render_prompt(instruction, input_, template)
        lines += [
            "  # the base's own chat template does not render the training format: give the prompt",
            "  # rendered (mlx_lm.generate turns \\n into a newline)",
            f"  {here}mlx_lm.generate --model {base} --adapter-path {adapter} --ignore-chat-template \\",
            f"      --prompt {shlex.quote(text.replace(chr(10), chr(92) + 'n'))}",
        ]
    return [*lines, ""]


def fidelity_warnings(workdir: Path, runs) -> list[str]:
    """The end of a snakemake run: each built run whose bundle loses more than its threshold of
    what the adapter learnt, with the fixes (mlx/fidelity.py's verdict, from metadata.json)."""
    lines = []
    for run in runs:
        path = workdir / "lora_adapters" / f"{run}_mlx" / "metadata.json"
        try:
            fidelity = json.loads(path.read_text(encoding="utf-8")).get("fidelity") or {}
        except (OSError, ValueError):
            continue
        if fidelity.get("ok") is False:
            lines.append(f"warning: {run}: " + fidelity["sentence"])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--workdir", default=".", help="the Snakemake working directory (demo: demo)")
    parser.add_argument("--report", help="the HTML report, if built")
    parser.add_argument("--prompts", help="JSONL of held-out prompts (default: the run's data folder)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    prompts = (
        Path(args.prompts)
        if args.prompts
        else REPO / "data" / "training" / args.run / "heldout_prompts.jsonl"
    )
    try:
        print(bundle_help(workdir, args.run, Path(args.report) if args.report else None, prompts))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
