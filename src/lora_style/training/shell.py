"""The pod-side shell scripts (the .sh files beside this module) and what they print.

Each script takes its values as positional arguments and is sent as ``sh -c SCRIPT sh ARG...``,
so no value is ever pasted into shell text. lib.sh's functions go in front of every script (and
into the run.sh uploaded to a run folder), so the rules they share (what counts as a complete
checkpoint, when an attempt is alive) are written once. Scripts answer in ``@@key value`` lines.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@cache
def script(name: str) -> str:
    """The text of <name> beside this module with lib.sh's functions in front (after a #! line)."""
    body = (HERE / name).read_text(encoding="utf-8")
    lib = (HERE / "lib.sh").read_text(encoding="utf-8")
    shebang = ""
    if body.startswith("#!"):
        shebang, _, body = body.partition("\n")
        shebang += "\n"
    return f"{shebang}{lib}\n# ---- {name}\n{body}"


def argv(name: str, *args) -> list[str]:
    """The command that runs a script here: ``sh -c SCRIPT sh ARG...``."""
    return ["sh", "-c", script(name), "sh", *map(str, args)]


def parse_markers(text: str) -> dict[str, list[str]]:
    """`@@key value` lines -> {key: [value, ...]}."""
    facts: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        if line.startswith("@@"):
            key, _, value = line[2:].partition(" ")
            facts[key].append(value.strip())
    return facts


def first(facts: dict, key: str, default: str = "") -> str:
    return facts[key][0] if facts.get(key) else default
