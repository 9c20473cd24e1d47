"""The rules one line of an SFT JSONL file must follow, and the message for each broken one.

The rule is the JSON schema below (an object with the string fields instruction, input and
output), plus two the schema cannot say (a blank output, a blank prompt). It is checked with
plain type checks: per line, jsonschema's validator cost four to five times the json.loads of
the line (18 us against 4 us on bench/'s data) for the same rule. tests/graph/test_validate_dataset.py
holds the two to the same verdicts and messages on every combination of value types.
"""

from __future__ import annotations

import json

FIELDS = ("instruction", "input", "output")

EXAMPLE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": list(FIELDS),
    "properties": {name: {"type": "string"} for name in FIELDS},
}

_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}

BOM = b"\xef\xbb\xbf"
ARRAY_FILE = (
    "the file is one JSON array, not JSON Lines; write one object per line, "
    "e.g. jq -c '.[]' in.json > train_sft.jsonl"
)
NO_EXAMPLES = (
    "the file has no examples; add one JSON object per line "
    '({"instruction": "...", "input": "...", "output": "..."})'
)


def describe(value) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def field_problems(obj: dict) -> list[str]:
    """Messages for an object that breaks the schema, in jsonschema's order (wrong types by
    field name, then missing fields), each with its fix; [] when the schema holds."""
    messages = [
        f'field "{name}" is {describe(obj[name])}, not a string; write it as a JSON string ("{name}": "...")'
        for name in sorted(FIELDS)
        if name in obj and not isinstance(obj[name], str)
    ]
    for name in FIELDS:
        if name not in obj:
            hint = ' (use "" for an empty input)' if name == "input" else ""
            messages.append(f'missing field "{name}"; add "{name}": "..."{hint}')
    return messages


def surrogate_problems(example: dict) -> list[str]:
    """JSON allows an escaped lone surrogate ("\\ud800"); it is not text, and neither UTF-8 nor
    a tokenizer takes it. Called only when writing the example failed, so valid data pays nothing."""
    messages = []
    for name in ("instruction", "input", "output"):
        try:
            example[name].encode("utf-8")
        except UnicodeEncodeError as exc:
            messages.append(
                f'field "{name}" holds a lone surrogate (\\u{ord(example[name][exc.start]):04x}, '
                f"character {exc.start + 1}), which is not text; fix the escape, or "
                "re-export the file from its source"
            )
    return messages


def line_problems(raw: bytes) -> tuple[dict | None, list[str]]:
    """One non-blank line (no line ending): the example, or the messages saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [
            f"invalid UTF-8 at byte {exc.start + 1} of the line; "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [
            f"invalid JSON at column {exc.colno}: {exc.msg}; each line must be one complete JSON object"
        ]
    if type(obj) is not dict:
        return None, [
            f"the line is {describe(obj)}, not a JSON object; write "
            '{"instruction": "...", "input": "...", "output": "..."}'
        ]
    instruction, input_, output = obj.get("instruction"), obj.get("input"), obj.get("output")
    if not (type(instruction) is str and type(input_) is str and type(output) is str):
        return None, field_problems(obj)
    messages = []
    if not output.strip():
        messages.append(
            'field "output" is blank; write the response the model should learn, or delete the line'
        )
    if not instruction.strip() and not input_.strip():
        messages.append(
            'fields "instruction" and "input" are both blank; the prompt would be '
            "empty, so write an instruction"
        )
    return (None, messages) if messages else (obj, [])
