"""The docs stay true: the generated config reference matches the schema, the README stays short,
every relative link (and its anchor) points at something that exists, no topic of the old
one-page README was dropped, and the package's imports go the way docs/architecture.md says.

Fast: no environment beyond the local side, no network, no subprocess.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from lora_style.config import reference

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

# The `## ` headings of the one-page README before it was split (`git show 83e865f:README.md`):
# each topic must still be a heading somewhere in README.md or docs/.
OLD_README_TOPICS = [
    "Two commands",
    "The graph",
    "Configuration",
    "The data stage",
    "Two environments",
    "Training on a RunPod pod (the guide's steps 1, 2, 5 and 6)",
    "Renting the pod from the graph (`provider: runpod`)",
    "On the Mac: the MLX bundle (the guide's steps 7 and 8)",
    "What happens when...",
    "More GPUs and clusters",
    "Performance",
    "Where the guide and the checked facts disagree",
]
# Its `### ` headings, kept as well.
OLD_README_SUBTOPICS = [
    "Architecture: which file to open for which concern",
    "The report",
    "1. A key and a pod",
    "2. Tell the config",
    "3. Look before you spend",
    "4. Train",
    "When something goes wrong",
    "What lands where",
    "A multi-GPU pod",
    "A Slurm cluster",
    "Several nodes, one training",
    "Before and after",
    "Where a target is missed, and why",
    "What changed",
    "On a GPU: the 4-bit path (not measured yet)",
]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks (a `# comment` in a block is no heading)."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def headings(path: Path) -> list[str]:
    return [
        re.sub(r"\s+#+\s*$", "", m.group(1)).strip()
        for line in prose_lines(path)
        if (m := re.match(r"#{1,6}\s+(.*)", line))
    ]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the page's headings (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(path):
        slug = reference.slug(heading)
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_the_config_reference_is_generated_from_the_current_schema():
    schema = yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text())
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert reference.render(schema) == committed, (
        "docs/config-reference.md is not what the schema gives: regenerate it with "
        "`python scripts/config_reference.py` (in .venv) and commit it"
    )


def test_every_schema_key_has_a_description():
    schema = yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text())
    missing = []

    def walk(node: dict, path: str) -> None:
        for key, prop in (node.get("properties") or {}).items():
            if "description" not in prop:
                missing.append(path + key)
            walk(prop, f"{path}{key}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}*.")

    walk(schema, "")
    assert not missing, f"add a description to these schema keys (docs/config-reference.md): {missing}"


def test_the_readme_is_under_150_lines():
    count = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert count < 150, f"README.md has {count} lines: move detail into a page of docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_something_that_exists(page):
    broken = []
    for line in prose_lines(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{target}: no {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_no_topic_of_the_old_readme_was_dropped():
    present = {heading for page in PAGES for heading in headings(page)}
    dropped = [t for t in OLD_README_TOPICS + OLD_README_SUBTOPICS if t not in present]
    assert not dropped, f"these topics have no heading in README.md or docs/ any more: {dropped}"


# docs/architecture.md: ground floor <- config <- data <- training <- mlx <- report, plan.py on top.
LAYERS = {"config": 1, "data": 2, "training": 3, "mlx": 4, "report": 5, "plan": 6}


def layer(module: str) -> int:
    """The stage of lora_style.X.Y: its first part's, the ground floor (0) for anything else."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def test_imports_go_down_the_stages_as_architecture_md_says():
    src = REPO / "src"
    wrong = []
    for path in sorted((src / "lora_style").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else [])
                    )
                targets = [f"{base}.{alias.name}" if base == "lora_style" else base for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "lora_style" and layer(target) > layer(module):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the dependency direction in docs/architecture.md:\n" + "\n".join(
        sorted(set(wrong))
    )
