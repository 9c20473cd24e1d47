"""What the tests share: the repository's paths, the two environments, and runners for the
scripts, the pod environment's interpreter and the real workflow.

The local side runs the tests (.venv); the pod side (.venv-pod, LLaMA-Factory) is reached
by subprocess, exactly as the pipeline reaches it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SAMPLE_DATA = REPO / "data" / "training" / "lovecraft" / "train_sft.jsonl"
SAMPLE_HELDOUT = REPO / "data" / "training" / "lovecraft" / "heldout_prompts.jsonl"
POD_VENV = Path(os.environ.get("LORA_POD_VENV", REPO / ".venv-pod"))
POD_PYTHON = POD_VENV / "bin" / "python"
LLAMAFACTORY_CLI = POD_VENV / "bin" / "llamafactory-cli"


def run_script(name: str, *args, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a command line with the local interpreter: scripts/<name>.py as a user types it, or a
    module (`lora_style.mlx.metadata`) as the rules run it."""
    command = [str(SCRIPTS / name)] if name.endswith(".py") else ["-m", name]
    return subprocess.run(
        [sys.executable, *command, *map(str, args)], capture_output=True, text=True, check=check, **kwargs
    )


def run_pod_python(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the pod environment's interpreter (LLaMA-Factory installed)."""
    if not POD_PYTHON.exists():
        pytest.fail(f"{POD_PYTHON} missing: run `make venvs` (or set LORA_POD_VENV)")
    proc = subprocess.run([str(POD_PYTHON), *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(f"pod python failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def snakemake_argv(
    workdir: Path, *args, configfile: Path | None = None, snakefile: Path = REPO / "Snakefile", cores: int = 2
) -> list[str]:
    """The command line of a real workflow run in `workdir`, for a test that starts it itself (in
    the background, say). `args` are flags and targets; the config file is merged over the
    repository's config/config.yaml, as for `make demo`."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    # Each job one thread (a rule's `threads:` is for a user's idle machine): the suite runs
    # several of these beside each other on two cores (see tests/conftest.py).
    cmd += ["--cores", str(cores), "--max-threads", "1"]
    if configfile:
        cmd.append(f"--configfile={configfile}")  # the = form: targets after it stay targets
    return cmd + [str(a) for a in args]


def snakemake(
    workdir: Path,
    *args,
    configfile: Path | None = None,
    check: bool = True,
    timeout: float = 900,
    snakefile: Path = REPO / "Snakefile",
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run the real workflow in `workdir` (its own results/, logs/, lora_adapters/).

    `args` are passed as they are (flags and targets); the config file in `configfile`
    is merged over the repository's config/config.yaml, as for `make demo`.
    """
    cmd = snakemake_argv(workdir, *args, configfile=configfile, snakefile=snakefile)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `condition` until it is truthy (and return it); fail after `timeout` seconds, or as soon
    as `proc` (a snakemake started in the background) ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"snakemake ended ({proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def demo_config(path: Path, **pod_keys) -> Path:
    """config/demo.yaml, its paths (relative to demo/) made absolute, so it runs anywhere;
    `pod_keys` are set on its pod (a price, say)."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for run in config["runs"].values():
        for key in ("data", "heldout"):
            run[key] = str((REPO / "demo" / run[key]).resolve())
    for pod in config["pods"].values():
        pod["llamafactory_cli"] = str(LLAMAFACTORY_CLI)
        pod.update(pod_keys)
    return write_config(path, config)
