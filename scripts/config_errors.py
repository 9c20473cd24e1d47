"""Explain config schema violations in one line each, naming the key and the fix.

snakemake.utils.validate checks config/config.yaml against config/schema/config.schema.yaml
when the workflow starts; its own message prints the whole schema. This turns the same
jsonschema errors into lines such as

    config: runs.lovecraft: unknown key 'learning_rate' (allowed: data, ...)
"""

from __future__ import annotations

import jsonschema

_TYPES = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
          int: "a number", float: "a number", type(None): "empty"}


def _where(path) -> str:
    return "config: " + ".".join(str(p) for p in path) if path else "config"


def _line(error: jsonschema.ValidationError) -> str:
    where = _where(error.absolute_path)
    schema, instance = error.schema, error.instance
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(instance) - set(allowed))
        hint = ""
        if error.absolute_path and error.absolute_path[0] == "runs":
            hint = "; LLaMA-Factory keys go under overrides:"
        return (f"{where}: unknown key {', '.join(map(repr, unknown))} "
                f"(allowed: {', '.join(allowed)}){hint}")
    if error.validator == "required":
        return f"{where}: {error.message.replace('is a required property', 'is missing')}"
    if error.validator == "type":
        return (f"{where}: {instance!r} is {_TYPES.get(type(instance), type(instance).__name__)}, "
                f"expected {error.validator_value}")
    if error.validator == "const":
        return f"{where}: must be {error.validator_value!r} here, not {instance!r}"
    if error.validator == "enum":
        return f"{where}: {instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern" and "propertyNames" in error.schema_path:
        return (f"{where}: name {instance!r} may only use letters, digits, '_' and '-' "
                f"({error.validator_value})")
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
