"""Explain config schema violations in one line each, naming the key and the fix.

snakemake.utils.validate checks config/config.yaml against config/schema/config.schema.yaml
when the workflow starts; its own message prints the whole schema. This turns the same
jsonschema errors into lines such as

    config: runs.lovecraft: unknown key 'learning_rate' (allowed: data, ...)
"""

from __future__ import annotations

import jsonschema

_TYPES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "true/false",
    int: "a number",
    float: "a number",
    type(None): "empty",
}


# What each of the schema's patterns means, in the words of a fix (a pattern shown as a regex
# leaves the user to read it). A pattern missing here is shown as jsonschema words it.
_PATTERNS = {
    r"^[^\x00-\x1f\x7f]+$": "must be one line: no newline, tab or other control character",
    r'^[^\x00-\x1f\x7f"\\%]+$': "must be one line without '\"', '\\' or '%' (ssh reads them in "
    "an option's value: its quoting, and %h for the host)",
    "^[A-Za-z0-9_-]+$": "may only use letters, digits, '_' and '-'",
    "^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$": "must be run names (letters, digits, '_' and '-') "
    "separated by commas",
    "^[A-Za-z0-9_][A-Za-z0-9_.:%-]*$": "must be an IP address, a host name or an ssh alias "
    "(letters, digits and '_.:%-', not starting with '-')",
    "^[A-Za-z0-9_][A-Za-z0-9_.-]*$": "may only use letters, digits and '_.-', not starting with '-' or '.'",
    "^[A-Za-z0-9_./~+@-]+$": "may only use letters, digits and '_./~+@-': no space or quote (it is "
    "handed to rsync, and LLaMA-Factory's launcher splits paths on spaces)",
    "^[A-Za-z_][A-Za-z0-9_]*$": "must be the name of an environment variable (letters, digits "
    "and '_'), never the key itself",
    "^https?://": "must start with http:// or https://",
    "^[A-Za-z0-9_.-]+$": "may only use letters, digits and '_.-'",
    "^[A-Za-z0-9_]+$": "may only use letters, digits and '_' (it names a folder models/<base>-<name>-mlx)",
    "^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$": "must be minutes, HH:MM:SS or D-HH:MM:SS",
}


def _where(path) -> str:
    return "config: " + ".".join(str(p) for p in path) if path else "config"


def _line(error: jsonschema.ValidationError) -> str:
    where = _where(error.absolute_path)
    schema, instance = error.schema, error.instance
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(instance) - set(allowed))
        hint = ""
        if len(error.absolute_path) == 2 and error.absolute_path[0] == "runs":  # a run's own keys
            hint = "; LLaMA-Factory keys go under overrides:"
        return f"{where}: unknown key {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)}){hint}"
    if error.validator == "required":
        return f"{where}: {error.message.replace('is a required property', 'is missing')}"
    if error.validator == "type":
        return (
            f"{where}: {instance!r} is {_TYPES.get(type(instance), type(instance).__name__)}, "
            f"expected {error.validator_value}"
        )
    if error.validator == "const":
        return f"{where}: must be {error.validator_value!r} here, not {instance!r}"
    if error.validator == "enum":
        return f"{where}: {instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern":
        says = _PATTERNS.get(error.validator_value)
        if says and "propertyNames" in error.schema_path:
            return f"{where}: name {instance!r} {says}"
        if says:
            return f"{where}: {instance!r} {says}"
    return f"{where}: {error.message}"


def explain(config: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    lines = []
    for error in errors:
        if error.validator == "oneOf":
            # Exactly one of several keys (a rented pod's template_id or image).
            names = sorted(key for option in error.validator_value for key in option.get("required", []))
            lines.append(f"{_where(error.absolute_path)}: set exactly one of {', '.join(names)}")
            continue
        # An if/then (allOf) failure wraps the real one; report the innermost errors.
        leaves = [error] if not error.context else [e for e in error.context]
        lines.extend(_line(leaf) for leaf in leaves)
    return list(dict.fromkeys(lines))
