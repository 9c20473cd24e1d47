"""The configuration reference (docs/config-reference.md), generated from the config schema.

Each key's `description`, type, default, allowed values and bounds come from
config/schema/config.schema.yaml, so the page cannot drift from what the workflow checks
(tests/unit/test_docs.py regenerates it and compares). Regenerate it after a schema edit:

    python scripts/config_reference.py            # or: python -m lora_style.config.reference
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from lora_style.fileio import write_atomic
from lora_style.paths import REPO, SCHEMA

OUTPUT = REPO / "docs" / "config-reference.md"
COMMAND = "python scripts/config_reference.py"


def _code(value) -> str:
    """A value as inline code, in the YAML spelling a config would use."""
    if isinstance(value, str):
        text = value if value else '""'
    else:
        text = json.dumps(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(node: dict) -> str:
    if "enum" in node:
        return "one of " + ", ".join(_code(v) for v in node["enum"])
    kind = node.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(kinds)
    if kinds == ["array"] and isinstance(node.get("items"), dict) and "type" in node["items"]:
        text = f"list of {node['items']['type']}"
    bounds = []
    for word, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if word in node:
            bounds.append(f"{sign} {node[word]}")
    if node.get("minProperties"):
        bounds.append(f"at least {node['minProperties']} entry")
    return text + (", " + ", ".join(bounds) if bounds else "")


def _is_section(node: dict) -> bool:
    """An object whose keys get a table of their own."""
    return isinstance(node.get("additionalProperties"), dict) or bool(node.get("properties"))


def _child_path(path: str, key: str, node: dict) -> str:
    name = f"{path}.{key}" if path else key
    if isinstance(node.get("additionalProperties"), dict):
        # runs -> runs.{run}: the entries of a named map, spelt with the singular placeholder.
        name += "." + "{" + (key[:-1] if key.endswith("s") else "name") + "}"
    return name


def _condition(node: dict, given: bool) -> str:
    """The few shapes of `if` (given) and `then` the schema uses, in words."""
    parts = []
    if "required" in node:
        keys = ", ".join(f"`{k}`" for k in node["required"])
        plural = len(node["required"]) > 1
        parts.append(f"{keys} {'are' if plural else 'is'} {'set' if given else 'required'}")
    for key, rule in (node.get("properties") or {}).items():
        if "const" in rule:
            parts.append(f"`{key}` {'is' if given else 'must be'} {_code(rule['const'])}")
    if "anyOf" in node and all(set(alt) == {"required"} for alt in node["anyOf"]):
        keys = [k for alt in node["anyOf"] for k in alt["required"]]
        parts.append("any of " + ", ".join(f"`{k}`" for k in keys) + " is set")
    if "oneOf" in node and all(set(alt) == {"required"} for alt in node["oneOf"]):
        keys = [k for alt in node["oneOf"] for k in alt["required"]]
        parts.append("exactly one of " + ", ".join(f"`{k}`" for k in keys) + " is set")
    if "not" in node and set(node["not"]) == {"required"}:
        keys = ", ".join(f"`{k}`" for k in node["not"]["required"])
        parts.append(f"{keys} is not set")
    known = {"required", "properties", "anyOf", "oneOf", "not"}
    if set(node) - known:
        parts.append("`" + json.dumps({k: node[k] for k in set(node) - known}, sort_keys=True) + "`")
    return " and ".join(parts)


def _rules(node: dict) -> list[str]:
    lines = []
    for rule in node.get("allOf", []):
        if "if" in rule and "then" in rule:
            lines.append(f"- When {_condition(rule['if'], True)}: {_condition(rule['then'], False)}.")
    return lines


def _section(path: str, node: dict, level: int) -> list[str]:
    entries = node["additionalProperties"] if isinstance(node.get("additionalProperties"), dict) else node
    title = f"`{path}`" if path else "Top level"
    lines = [f"{'#' * level} {title}", ""]
    if path and node.get("description"):
        lines += [node["description"], ""]
    required = set(entries.get("required", []))
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    subsections = []
    for key, prop in (entries.get("properties") or {}).items():
        if "default" in prop:
            default = _code(prop["default"])
        else:
            default = "**required**" if key in required else ""
        text = prop.get("description", "")
        if _is_section(prop):
            # Its description heads its own section below; here, the way there.
            child = _child_path(path, key, prop)
            text = f"See [`{child}`](#{slug(f'`{child}`')})."
            subsections.append((child, prop))
        lines.append(f"| `{key}` | {_cell(_type(prop))} | {_cell(default)} | {_cell(text)} |")
    lines.append("")
    rules = _rules(entries)
    if rules:
        lines += ["Rules across keys:", "", *rules, ""]
    for child, prop in subsections:
        lines += _section(child, prop, min(level + 1, 4) if path else level)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower()
    kept = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


def render(schema: dict) -> str:
    """docs/config-reference.md from the config schema (a dict, as yaml.safe_load reads it)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from config/schema/config.schema.yaml by "
        f"`{COMMAND}`; edit the schema, not this page. -->",
        "",
        "Every key of `config/config.yaml`, from its schema "
        "([config/schema/config.schema.yaml](../config/schema/config.schema.yaml)), which the "
        "workflow checks the config against when it starts. How the pieces fit together: "
        "[configuration.md](configuration.md).",
        "",
    ]
    if schema.get("description"):
        lines += [schema["description"], ""]
    lines += _section("", schema, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", default=str(SCHEMA), help="the config schema (YAML)")
    parser.add_argument("--output", default=str(OUTPUT), help="the page to write ('-': standard output)")
    args = parser.parse_args(argv)
    text = render(yaml.safe_load(Path(args.schema).read_text(encoding="utf-8")))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_atomic(Path(args.output), text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
