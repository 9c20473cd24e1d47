"""Validate an SFT JSONL file and write a normalised copy plus a JSON report.

The guide's step 2 format: one JSON object per line with string fields
``instruction``, ``input`` and ``output``. Every problem is reported as
``FILE:LINE: what is wrong; how to fix it``, all of them in one pass, and an
invalid file leaves no output behind, so nothing downstream (an upload, pod
time) can start from bad data.

    python scripts/validate_dataset.py data/training/lovecraft/train_sft.jsonl \
        --output results/lovecraft/data/train.jsonl \
        --report results/lovecraft/data/validation.json \
        --tokenizer Qwen/Qwen2.5-32B --template qwen --cutoff-len 2048

With --tokenizer (the base model: a local directory, or a hub id whose tokenizer files alone
are fetched into the Hugging Face cache, hub.py), the report counts each example's tokens as
training renders it, and the examples over cutoff_len. When the hub cannot be asked (no
network, HF_HUB_OFFLINE=1, a gated model without HF_TOKEN), the report says why and keeps to
character counts: that is no reason to stop the run.

One pass over the file, streamed: each line is checked (checks.py), written to the
normalised copy in a staging file, hashed and counted (token_counts.py) as it goes by, so
memory holds one line and a batch of text, not the file; the staging file becomes the output
only when the whole file is valid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from lora_style.data.checks import ARRAY_FILE, BOM, FIELDS, NO_EXAMPLES, line_problems, surrogate_problems
from lora_style.data.split import FALLBACK, SPLIT, held_out, hold_out_lowest, split_key
from lora_style.data.token_counts import Tokens
from lora_style.fileio import write_atomic

# The normalised line is json.dumps({instruction, input, output}, ensure_ascii=False), written
# out with json's own C string encoder: byte for byte the same, a third of the time (json.dumps
# builds an encoder per call). A test compares it with json.dumps.
_quote = json.encoder.encode_basestring
_FIELD_SET = frozenset(FIELDS)


@dataclass
class Problem:
    line: int | None  # None: the file as a whole
    message: str

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line is not None else path
        return f"{where}: {self.message}"


@dataclass
class Result:
    """What one pass found: the problems, or the statistics of a valid file."""

    problems: list[Problem] = field(default_factory=list)
    examples: int = 0
    blank_lines: int = 0
    dropped_keys: dict[str, int] = field(default_factory=dict)
    crlf: bool = False
    bom: bool = False
    empty_input: int = 0
    duplicates: list[dict] = field(default_factory=list)
    chars: dict[str, array] = field(default_factory=lambda: {n: array("q") for n in FIELDS})
    sha256: str = ""
    eval_examples: int = 0  # of `examples`, those on the held-out side (eval.jsonl)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stream(handle, out, tokens: Tokens, eval_out=None, val_size: float = 0.0) -> Result:
    """Check a JSONL stream (binary), writing the normalised copy to `out` as it goes (with
    `eval_out`, the held-out examples to it instead); collect every problem, never raise on the
    data."""
    result = Result()
    digest = hashlib.sha256()
    seen: dict[bytes, int] = {}  # a digest of each normalised example -> its first line
    if handle.read(3) == BOM:
        result.bom = True
    else:
        handle.seek(0)
    pending_blank, pending_cr, started = 0, False, False
    counting = tokens.spec is not None  # a call per line saved when there is nothing to count
    for number, raw in enumerate(handle, start=1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        cr = raw.endswith(b"\r")
        if cr:
            raw = raw[:-1]
        if not raw or raw.isspace():
            # Blank lines count only once an example follows: trailing ones are the file's end.
            pending_blank, pending_cr = pending_blank + 1, pending_cr or cr
            continue
        if not started:
            started = True
            if raw.lstrip().startswith(b"[") and _is_array(raw, handle):
                result.problems.append(Problem(1, ARRAY_FILE))
                return result
        result.blank_lines += pending_blank
        result.crlf = result.crlf or cr or pending_cr
        pending_blank, pending_cr = 0, False
        example, messages = line_problems(raw)
        if messages:
            result.problems.extend(Problem(number, m) for m in messages)
            tokens.stop()
            continue
        if result.problems:
            continue  # still checking, no longer writing: the output will not be kept
        if example.keys() != _FIELD_SET:
            for key in example.keys() - _FIELD_SET:
                result.dropped_keys[key] = result.dropped_keys.get(key, 0) + 1
        instruction, input_, output = example["instruction"], example["input"], example["output"]
        try:
            line = (
                f'{{"instruction": {_quote(instruction)}, "input": {_quote(input_)}, '
                f'"output": {_quote(output)}}}\n'
            ).encode()
        except UnicodeEncodeError:
            result.problems.extend(Problem(number, m) for m in surrogate_problems(example))
            tokens.stop()
            continue
        key = split_key(line)
        if eval_out is not None and held_out(key, val_size):
            eval_out.write(line)
            result.eval_examples += 1
        else:
            out.write(line)
        digest.update(line)
        first = seen.setdefault(key, number)
        if first != number:
            result.duplicates.append({"line": number, "same_as_line": first})
        result.examples += 1
        result.chars["instruction"].append(len(instruction))
        result.chars["input"].append(len(input_))
        result.chars["output"].append(len(output))
        result.empty_input += not input_
        if counting:
            tokens.add(number, example)
    if not started:
        result.problems.append(Problem(None, NO_EXAMPLES))
    result.sha256 = digest.hexdigest()
    return result


def _is_array(first: bytes, handle) -> bool:
    """Whether the file from this first non-blank line on is one JSON array (a .json file saved
    as .jsonl). Only then is the rest of the file read whole; a parse failure means not."""
    position = handle.tell()
    rest = handle.read()
    try:
        whole = json.loads((first + b"\n" + rest).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        whole = None
    if isinstance(whole, list):
        return True
    handle.seek(position)
    return False


def _length_stats(values) -> dict:
    return {
        "min": min(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 1),
        "median": statistics.median(values),
    }


def build_report(
    path: str,
    result: Result,
    tokens: dict,
    lengths: list[int] | None,
    lines: list[int],
    cutoff_len: int | None = None,
) -> dict:
    report = {
        "input": path,
        "examples": result.examples,
        "train_examples": result.examples - result.eval_examples,
        "eval_examples": result.eval_examples,
        "sha256": result.sha256,
        "duplicates": len(result.duplicates),
        "duplicate_lines": result.duplicates,
        "empty_input": result.empty_input,
        "blank_lines_skipped": result.blank_lines,
        "crlf_line_endings": result.crlf,
        "utf8_bom": result.bom,
        "dropped_keys": result.dropped_keys,
        "chars": {name: _length_stats(result.chars[name]) for name in FIELDS},
    }
    report["tokens"] = {**tokens, **(_length_stats(lengths) if lengths else {})}
    if cutoff_len is not None:
        report["cutoff_len"] = cutoff_len
        if lengths:
            over = [n for n, t in zip(lines, lengths) if t > cutoff_len]
            report["over_cutoff_len"] = len(over)
            report["over_cutoff_len_lines"] = over
    return report


def validate_file(
    path: str,
    output: str | None = None,
    tokenizer: str | None = None,
    cutoff_len: int | None = None,
    template: str = "qwen",
    eval_output: str | None = None,
    val_size: float = 0.0,
):
    """Return (result, report or None). Reads the file once; the normalised copy lands at
    `output` only when the file is valid (atomically), never otherwise. With `eval_output`, the
    examples on the held-out side of the split (`val_size`, held_out()) go there instead."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        result = Result(
            problems=[
                Problem(
                    None,
                    f"cannot read the file ({exc.strerror}); "
                    "check the run's `data:` path in config/config.yaml",
                )
            ]
        )
        return result, None
    target = Path(output) if output else None
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        out = os.fdopen(fd, "wb", buffering=1 << 20)
    else:
        staging, out = None, open(os.devnull, "wb")
    eval_target = Path(eval_output) if eval_output else None
    eval_staging, eval_out = None, None
    if eval_target:
        eval_target.parent.mkdir(parents=True, exist_ok=True)
        fd, eval_staging = tempfile.mkstemp(
            dir=eval_target.parent, prefix=f".{eval_target.name}.", suffix=".tmp"
        )
        eval_out = os.fdopen(fd, "wb", buffering=1 << 20)
    try:
        with handle, out, eval_out or open(os.devnull, "wb"):
            counter = Tokens(tokenizer, template, cutoff_len)
            result = check_stream(handle, out, counter, eval_out, val_size)
            if not result.ok:
                return result, None
            report = build_report(path, result, *counter.report(), cutoff_len)
        if eval_target:
            report["split"] = {"val_size": val_size, "rule": SPLIT}
            if val_size and not result.eval_examples and staging:
                moved = hold_out_lowest(Path(staging), Path(eval_staging))
                report["eval_examples"], report["train_examples"] = moved, result.examples - moved
                report["split"]["fallback"] = FALLBACK
        if eval_staging:
            os.replace(eval_staging, eval_target)
            eval_staging = None
        if staging:
            os.replace(staging, target)
            staging = None
        return result, report
    finally:
        for left in (staging, eval_staging):
            if left:
                Path(left).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="SFT JSONL file (instruction, input, output per line)")
    parser.add_argument("--output", required=True, help="normalised JSONL to write")
    parser.add_argument("--report", required=True, help="JSON report to write")
    parser.add_argument(
        "--tokenizer",
        help="the base model, for token counts: a directory with tokenizer.json, "
        "or a hub id (its tokenizer files alone are fetched, cached)",
    )
    parser.add_argument(
        "--eval-output",
        help="JSONL to write the held-out examples to (the training YAML's eval_dataset)",
    )
    parser.add_argument(
        "--val-size",
        type=float,
        default=0.0,
        help="the fraction held out, split by a hash of each normalised example (stable under edits)",
    )
    parser.add_argument("--cutoff-len", type=int, help="training cutoff_len, to count examples over it")
    parser.add_argument(
        "--template",
        default="qwen",
        help="the run's LLaMA-Factory template (config/templates/NAME.json), "
        "to count tokens as training renders them",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.val_size < 1:
        parser.error(f"--val-size {args.val_size}: a fraction in [0, 1)")

    # Nothing stale may survive a failed run: remove old outputs before anything else.
    for out in (args.output, args.report, args.eval_output):
        if out:
            Path(out).unlink(missing_ok=True)
    try:
        result, report = validate_file(
            args.input,
            args.output,
            args.tokenizer,
            args.cutoff_len,
            args.template,
            args.eval_output,
            args.val_size,
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.ok:
        for problem in result.problems:
            print(problem.format(args.input), file=sys.stderr)
        count = len(result.problems)
        print(f"{args.input}: {count} problem{'s' * (count != 1)}; nothing written", file=sys.stderr)
        return 1
    if args.tokenizer and not report["tokens"]["counted"]:
        print(f"warning: no token counts: {report['tokens']['why']}", file=sys.stderr)
    write_atomic(args.report, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    print(
        f"{args.input}: {report['examples']} examples ({report['train_examples']} to train, "
        f"{report['eval_examples']} held out), {report['duplicates']} duplicates"
        + (
            f", {report['over_cutoff_len']} over cutoff_len {args.cutoff_len}"
            if "over_cutoff_len" in report
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
