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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from fileio import write_atomic
from train_yaml import HUB_ID, is_local_model

FIELDS = ("instruction", "input", "output")

EXAMPLE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": list(FIELDS),
    "properties": {name: {"type": "string"} for name in FIELDS},
}

_VALIDATOR = jsonschema.Draft202012Validator(EXAMPLE_SCHEMA)
_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


@dataclass
class Problem:
    line: int | None  # None: the file as a whole
    message: str

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line is not None else path
        return f"{where}: {self.message}"


@dataclass
class Result:
    examples: list[dict] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    blank_lines: int = 0
    dropped_keys: dict[str, int] = field(default_factory=dict)
    crlf: bool = False
    bom: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def _describe(value) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _schema_problems(obj: dict) -> list[str]:
    """Messages for one object, in field order, each with its fix."""
    messages = []
    for error in sorted(_VALIDATOR.iter_errors(obj), key=lambda e: str(e.path)):
        if error.validator == "required":
            missing = [name for name in FIELDS if name not in obj]
            for name in missing:
                hint = ' (use "" for an empty input)' if name == "input" else ""
                messages.append(f'missing field "{name}"; add "{name}": "..."{hint}')
        elif error.validator == "type":
            name = error.path[0]
            messages.append(
                f'field "{name}" is {_describe(error.instance)}, not a string; '
                f'write it as a JSON string ("{name}": "...")'
            )
    # "required" reports every missing field at once; keep one message per field.
    return list(dict.fromkeys(messages))


def check_lines(data: bytes) -> Result:
    """Check the raw bytes of a JSONL file; collect every problem, never raise."""
    result = Result()
    if data.startswith(b"\xef\xbb\xbf"):
        result.bom = True
        data = data[3:]
    raw_lines = data.split(b"\n")
    # Trailing blank lines (and the final newline) are fine; blank lines between examples too.
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    if not raw_lines:
        result.problems.append(
            Problem(None, "the file has no examples; add one JSON object per line "
                          '({"instruction": "...", "input": "...", "output": "..."})')
        )
        return result

    stripped = data.lstrip()
    if stripped.startswith(b"["):
        try:
            whole = json.loads(stripped.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = None
        if isinstance(whole, list):
            result.problems.append(
                Problem(1, "the file is one JSON array, not JSON Lines; write one object per "
                           "line, e.g. jq -c '.[]' in.json > train_sft.jsonl")
            )
            return result

    for number, raw in enumerate(raw_lines, start=1):
        if raw.endswith(b"\r"):
            result.crlf = True
            raw = raw[:-1]
        if not raw.strip():
            result.blank_lines += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.problems.append(
                Problem(number, f"invalid UTF-8 at byte {exc.start + 1} of the line; "
                                "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
            )
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            result.problems.append(
                Problem(number, f"invalid JSON at column {exc.colno}: {exc.msg}; "
                                "each line must be one complete JSON object")
            )
            continue
        if not isinstance(obj, dict):
            result.problems.append(
                Problem(number, f"the line is {_describe(obj)}, not a JSON object; write "
                                '{"instruction": "...", "input": "...", "output": "..."}')
            )
            continue
        messages = _schema_problems(obj)
        if not messages:
            if not obj["output"].strip():
                messages.append('field "output" is blank; write the response the model '
                                "should learn, or delete the line")
            if not obj["instruction"].strip() and not obj["input"].strip():
                messages.append('fields "instruction" and "input" are both blank; the '
                                "prompt would be empty, so write an instruction")
        if messages:
            result.problems.extend(Problem(number, m) for m in messages)
            continue
        for key in obj.keys() - set(FIELDS):
            result.dropped_keys[key] = result.dropped_keys.get(key, 0) + 1
        result.examples.append({name: obj[name] for name in FIELDS})
        result.line_numbers.append(number)
    return result


def _length_stats(values: list[int]) -> dict:
    return {
        "min": min(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 1),
        "median": statistics.median(values),
    }


NO_TOKENIZER = {"counted": False, "why": "no tokenizer given (--tokenizer)"}


def count_tokens(examples: list[dict], tokenizer: str | None, template: str) -> dict:
    """The report's "tokens": {"counted": true, ..., "lengths": [...]}, or {"counted": false,
    "why": ...} when there is no tokenizer, or the hub cannot give a hub id's."""
    if not tokenizer:
        return dict(NO_TOKENIZER)
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir() and not is_local_model(tokenizer) and HUB_ID.match(tokenizer):
        import hub  # huggingface_hub: a quarter of a second, for hub ids only

        try:
            folder = hub.download_tokenizer(tokenizer)
        except hub.HubError as exc:
            return {"counted": False,
                    "why": f"{exc}; character counts only (to count tokens, run the step again "
                           "where the hub answers: snakemake --forcerun validate_dataset)"}
    return {"counted": True, "tokenizer": tokenizer, "template": template,
            "lengths": token_lengths(examples, str(folder), template)}


def token_lengths(examples: list[dict], tokenizer_dir: str, template: str = "qwen") -> list[int]:
    """Tokens per example as training sees it: rendered in the run's chat template."""
    from tokenizers import Tokenizer

    from prompt_format import load_template, render_training_text

    tokenizer_file = Path(tokenizer_dir) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"{tokenizer_file}: no tokenizer.json; pass the base model's directory to --tokenizer"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    chat = load_template(template)
    texts = [render_training_text(ex["instruction"], ex["input"], ex["output"], chat)
             for ex in examples]
    return [len(enc.ids) for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]


def build_report(path: str, result: Result, normalised: bytes,
                 tokens: dict | None = None, cutoff_len: int | None = None) -> dict:
    """`tokens`: count_tokens()'s answer."""
    examples = result.examples
    seen: dict[tuple, int] = {}
    duplicates = []
    for number, ex in zip(result.line_numbers, examples):
        key = tuple(ex[name] for name in FIELDS)
        if key in seen:
            duplicates.append({"line": number, "same_as_line": seen[key]})
        else:
            seen[key] = number
    report = {
        "input": path,
        "examples": len(examples),
        "sha256": hashlib.sha256(normalised).hexdigest(),
        "duplicates": len(duplicates),
        "duplicate_lines": duplicates,
        "empty_input": sum(1 for ex in examples if not ex["input"]),
        "blank_lines_skipped": result.blank_lines,
        "crlf_line_endings": result.crlf,
        "utf8_bom": result.bom,
        "dropped_keys": result.dropped_keys,
        "chars": {
            name: _length_stats([len(ex[name]) for ex in examples]) for name in FIELDS
        },
    }
    tokens = dict(tokens or NO_TOKENIZER)
    lengths = tokens.pop("lengths", None)
    report["tokens"] = {**tokens, **(_length_stats(lengths) if lengths else {})}
    if cutoff_len is not None:
        report["cutoff_len"] = cutoff_len
        if lengths:
            over = [n for n, t in zip(result.line_numbers, lengths) if t > cutoff_len]
            report["over_cutoff_len"] = len(over)
            report["over_cutoff_len_lines"] = over
    return report


def normalise(examples: list[dict]) -> bytes:
    return "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples).encode("utf-8")


def validate_file(path: str, tokenizer: str | None = None, cutoff_len: int | None = None,
                  template: str = "qwen"):
    """Return (result, normalised bytes, report or None). Reads the file once."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        result = Result(problems=[Problem(None, f"cannot read the file ({exc.strerror}); "
                                                "check the run's `data:` path in config/config.yaml")])
        return result, b"", None
    result = check_lines(data)
    if not result.ok:
        return result, b"", None
    normalised = normalise(result.examples)
    tokens = count_tokens(result.examples, tokenizer, template)
    return result, normalised, build_report(path, result, normalised, tokens, cutoff_len)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="SFT JSONL file (instruction, input, output per line)")
    parser.add_argument("--output", required=True, help="normalised JSONL to write")
    parser.add_argument("--report", required=True, help="JSON report to write")
    parser.add_argument("--tokenizer",
                        help="the base model, for token counts: a directory with tokenizer.json, "
                             "or a hub id (its tokenizer files alone are fetched, cached)")
    parser.add_argument("--cutoff-len", type=int, help="training cutoff_len, to count examples over it")
    parser.add_argument("--template", default="qwen",
                        help="the run's LLaMA-Factory template (config/templates/NAME.json), "
                             "to count tokens as training renders them")
    args = parser.parse_args(argv)

    # Nothing stale may survive a failed run: remove old outputs before anything else.
    for out in (args.output, args.report):
        Path(out).unlink(missing_ok=True)
    try:
        result, normalised, report = validate_file(args.input, args.tokenizer, args.cutoff_len,
                                                   args.template)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.ok:
        for problem in result.problems:
            print(problem.format(args.input), file=sys.stderr)
        count = len(result.problems)
        print(f"{args.input}: {count} problem{'s' * (count != 1)}; nothing written",
              file=sys.stderr)
        return 1
    if args.tokenizer and not report["tokens"]["counted"]:
        print(f"warning: no token counts: {report['tokens']['why']}", file=sys.stderr)
    write_atomic(args.report, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    write_atomic(args.output, normalised)
    print(f"{args.input}: {report['examples']} examples, {report['duplicates']} duplicates"
          + (f", {report['over_cutoff_len']} over cutoff_len {args.cutoff_len}"
             if "over_cutoff_len" in report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
