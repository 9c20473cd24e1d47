"""Which executor reaches a pod's machine: the one place that knows every kind.

    python -m lora_style.training.machines --pod-settings JSON 'uname -a'

executor.py holds the two transports (this machine, ssh + rsync); slurm.py builds a scheduler on
top of them. The factory sits above both, so neither imports the other back.
"""

from __future__ import annotations

import argparse
import os
import sys

from .executor import Executor, LocalExecutor, SSHExecutor
from .messages import PodError
from .settings import PodSettings, load_settings
from .slurm import SlurmExecutor

EXECUTORS = {"ssh": SSHExecutor, "local": LocalExecutor, "slurm": SlurmExecutor}


def make_executor(settings: PodSettings, workdir: str | os.PathLike = ".") -> Executor:
    kind = settings.executor
    if kind not in EXECUTORS:
        raise PodError(f"pods.{settings.name or '?'}.executor: '{kind}' is not one of {', '.join(EXECUTORS)}")
    return EXECUTORS[kind](settings, workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pod-settings", required=True, help="a pods: entry (with its name) as JSON, or a file holding it"
    )
    parser.add_argument("script", help="shell script to run there")
    args = parser.parse_args(argv)
    try:
        result = make_executor(load_settings(args.pod_settings)).sh(args.script)
    except PodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result.out)
    sys.stderr.write(result.err)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
