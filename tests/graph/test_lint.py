"""The workflow and its shell scripts pass their linters, and the two local-side pin lists agree.

What CI's `snakemake --lint` and `snakefmt --check` do in the workflows this project follows, plus
shellcheck for every shell script (scripts/logged.sh, the pod's src/lora_style/training/*.sh, bench/gpu/*.sh).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers.workflow import REPO


def test_snakemake_lint(tmp_path):
    # In a scratch working directory, so the lint leaves nothing (.snakemake/) in the checkout.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            REPO / "Snakefile",
            "--directory",
            tmp_path,
            "--lint",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out


def test_snakefmt_check():
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"{proc.stdout}{proc.stderr}\nformat them: .venv/bin/snakefmt Snakefile rules"
    )


def test_shellcheck_every_shell_script():
    scripts = sorted(
        str(p.relative_to(REPO)) for folder in ("scripts", "src") for p in (REPO / folder).rglob("*.sh")
    )
    assert "scripts/logged.sh" in scripts and "src/lora_style/training/run.sh" in scripts
    if not shutil.which("shellcheck"):
        pytest.fail(
            "shellcheck not found: install it (apt-get install shellcheck; "
            "brew install shellcheck), .ci/run does"
        )
    proc = subprocess.run(
        ["shellcheck", "-s", "sh", *scripts], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_bench_scripts():
    """bench/gpu's scripts run on a lent GPU machine, where a typo costs GPU minutes (bash: the
    dialect comes from their #! line)."""
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / "bench").rglob("*.sh"))
    assert "bench/gpu/check.sh" in scripts
    if not shutil.which("shellcheck"):
        pytest.fail(
            "shellcheck not found: install it (apt-get install shellcheck; "
            "brew install shellcheck), .ci/run does"
        )
    proc = subprocess.run(["shellcheck", *scripts], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def requirement_lines(text: str) -> list[str]:
    """Requirement specifiers, without comments and blank lines."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_environment_yml_pins_are_requirements_local():
    """conda users get exactly the pip users' local side (environment.yml cannot `-r` it)."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    (pip,) = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)]
    local = requirement_lines((REPO / "requirements" / "local.txt").read_text())
    assert not any(line.startswith("-") for line in local), "local.txt must stay a plain list"
    assert pip == local, "make environment.yml's pip: list equal to requirements/local.txt"


def test_ruff_check_and_format():
    """The Python lints clean and is formatted as ruff formats it (pyproject.toml's settings)."""
    for args, fix in ((["check"], "ruff check --fix"), (["format", "--check"], "ruff format")):
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "src", "scripts", "tests", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (
            f"{proc.stdout}{proc.stderr}\nfix: .venv/bin/{fix} src scripts tests bench"
        )
