"""The package's shape, checked: one direction of imports, no cycles, no sys.path tricks.

    ground floor (fileio, safetensors_io, hub, prompt_format, paths, tiny_model)
      <- config <- data <- training <- mlx <- report,   plan (the plan's cost line) on top

A module imports only from its own layer or below, and the modules import no cycle, counting
every import a module makes when it runs (function-local ones too; `if TYPE_CHECKING:` blocks
aside). Read from the source with `ast`: nothing is imported to check it. docs/architecture.md
says the same in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.workflow import REPO

SRC = REPO / "src"
LAYERS = [
    {
        "lora_style",
        "lora_style.fileio",
        "lora_style.safetensors_io",
        "lora_style.hub",
        "lora_style.prompt_format",
        "lora_style.paths",
        "lora_style.tiny_model",
    },
    {"lora_style.config"},
    {"lora_style.data"},
    {"lora_style.training"},
    {"lora_style.mlx"},
    {"lora_style.report"},
    {"lora_style.plan"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The lora_style modules `path` imports at run time (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def layer(module: str) -> int:
    for number, members in enumerate(LAYERS):
        if module in members or any(module.startswith(m + ".") for m in members if m != "lora_style"):
            return number
    raise AssertionError(f"{module}: in no layer of tests/unit/test_architecture.py; add it")


def test_imports_go_one_way():
    wrong = [
        f"{a} imports {b}" for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)
    ]
    assert wrong == [], "an import against the direction (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_checks_find_what_they_look_for(tmp_path):
    assert "lora_style.training.executor" in graph()["lora_style.training.launch"]
    assert layer("lora_style.training.launch") > layer("lora_style.config.train_yaml")


def test_no_module_reaches_another_through_sys_path():
    found = []
    for folder in ("src", "scripts", "tests", "rules"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".smk") and path != Path(__file__):
                text = path.read_text(encoding="utf-8")
                if "sys.path.insert" in text or "sys.path.append" in text or "PYTHONPATH" in text:
                    found.append(str(path.relative_to(REPO)))
    assert found == []
