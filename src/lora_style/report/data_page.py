"""The report's data page: what validation found in a run's data (validation.json)."""

from __future__ import annotations

from html import escape

from lora_style.report.html_parts import code, facts_table, fmt, grid, lines_list, note, page

LENGTH_ROWS = {
    "instruction": "instruction (characters)",
    "input": "input (characters)",
    "output": "output (characters)",
}
VALIDATION_KEYS = {
    "input",
    "examples",
    "sha256",
    "duplicates",
    "duplicate_lines",
    "empty_input",
    "blank_lines_skipped",
    "crlf_line_endings",
    "utf8_bom",
    "dropped_keys",
    "chars",
    "tokens",
    "cutoff_len",
    "over_cutoff_len",
    "over_cutoff_len_lines",
}


def validation_page(run: str, v: dict) -> str:
    body = []
    examples = v.get("examples", 0)
    if v.get("duplicates"):
        pairs = "; ".join(
            f"line {d['line']} = line {d['same_as_line']}" for d in v.get("duplicate_lines", [])[:10]
        )
        body.append(
            note(
                "warn",
                f"{v['duplicates']} duplicate example(s): {escape(pairs)}. "
                "They weigh twice in training; remove them from the data if "
                "that is not meant.",
            )
        )
    tokens = v.get("tokens") or {}
    counted = tokens.get("counted", "min" in tokens)  # older reports: the statistics alone
    if "over_cutoff_len" in v:
        over, cutoff = v["over_cutoff_len"], v.get("cutoff_len")
        if over:
            body.append(
                note(
                    "warn",
                    f"{over} of {examples} examples are longer than cutoff_len "
                    f"{cutoff} tokens (lines {lines_list(v.get('over_cutoff_len_lines', []))}): "
                    "training cuts them off there. Shorten them, or raise cutoff_len "
                    "(more memory).",
                )
            )
        else:
            body.append(note("ok", f"All {examples} examples fit in cutoff_len {cutoff} tokens."))
    elif not counted:
        why = tokens.get("why") or "the run's tokenizer was not available to the validation"
        body.append(
            note(
                "info",
                f"No token counts ({escape(why)}): lengths are in characters, "
                "and the examples over cutoff_len are not counted.",
            )
        )
    body.append("<h2>The data</h2>")
    body.append(
        facts_table(
            {
                "examples": examples,
                "to train on (train.jsonl)": v.get("train_examples", examples),
                "held out (eval.jsonl)": (
                    f"{v['eval_examples']} (val_size {v['split']['val_size']}, split by a hash of "
                    "each example: an edit never moves another across)"
                    if "split" in v
                    else v.get("eval_examples", 0)
                ),
                "duplicates": v.get("duplicates"),
                "examples with an empty input": v.get("empty_input"),
                "blank lines skipped": v.get("blank_lines_skipped"),
                "CRLF line endings": v.get("crlf_line_endings"),
                "UTF-8 byte order mark": v.get("utf8_bom"),
                "keys dropped": v.get("dropped_keys") or "(none)",
                "file": v.get("input"),
                "sha256 (normalised)": v.get("sha256"),
            }
        )
    )
    body.append("<h2>Lengths</h2>")
    rows = []
    for name, stats in (v.get("chars") or {}).items():
        rows.append(
            [escape(LENGTH_ROWS.get(name, name))]
            + [escape(fmt(stats.get(k))) for k in ("min", "median", "mean", "max")]
        )
    if counted:
        label = "whole example (tokens, in the run's template)"
        rows.append([escape(label)] + [escape(fmt(tokens.get(k))) for k in ("min", "median", "mean", "max")])
    body.append(grid(["", "min", "median", "mean", "max"], rows, numeric={1, 2, 3, 4}))
    if "cutoff_len" in v:
        body.append(
            facts_table(
                {
                    "cutoff_len (tokens)": v["cutoff_len"],
                    "examples over it": v.get("over_cutoff_len", "not counted (no token counts)"),
                }
            )
        )
    if counted and tokens.get("tokenizer"):
        body.append(
            f"<p>Tokens counted with the tokenizer of {code(tokens['tokenizer'])}, each "
            f"example rendered in the template {code(tokens.get('template', '?'))} as "
            "training renders it.</p>"
        )
    other = {k: val for k, val in v.items() if k not in VALIDATION_KEYS}
    if other:
        body.append("<h2>More</h2>")
        body.append(facts_table(other))
    return page(
        f"{run}: the data",
        f"What validation found in the run's training data "
        f"({code(v.get('input', '?'))}), before anything reached the pod.",
        body,
    )
