"""How the bench times things: a child process's wall time and its own peak memory, medians of
several runs, and a floor timed in the same run so that every figure is a ratio that survives a
slower or busier machine."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass
class Sample:
    seconds: float
    peak_rss: int  # bytes: the child's own maximum resident set (and its waited-for children's)
    cpu: float = 0.0  # user + system seconds of the child and its waited-for children


# The command runs under a small Python of its own, which times it and reads its rusage: a
# child forked straight from this (large) process would report this process's memory as part of
# its own peak (Linux carries the parent's high-water mark across fork and exec into ru_maxrss).
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "proc = subprocess.run(sys.argv[2:], stdout=None if sys.argv[1] == '-' else subprocess.DEVNULL)\n"
    "seconds = time.perf_counter() - start\n"
    "use = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "sys.stderr.write('@@' + json.dumps([seconds, use.ru_maxrss, use.ru_utime + use.ru_stime]))\n"
    "sys.exit(proc.returncode)\n"
)


def run(cmd: list[str], *, env: dict | None = None, cwd=None, check: bool = True) -> Sample:
    """Run `cmd` once: its wall seconds, peak RSS and CPU seconds (its own, and its children's)."""
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, "devnull", *map(str, cmd)],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    err = proc.stderr.decode(errors="replace")
    head, _, answer = err.rpartition("@@")
    if (check and proc.returncode != 0) or not answer:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{head[-3000:]}")
    seconds, maxrss_kib, cpu = json.loads(answer)
    return Sample(seconds, maxrss_kib * 1024, cpu)


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def peak_rss(self) -> int:
        return max(s.peak_rss for s in self.samples)

    def spread(self) -> str:
        return ", ".join(f"{s.seconds:.2f}" for s in self.samples)


def alternate(repeat: int, **commands) -> dict[str, Series]:
    """Run each named command `repeat` times, interleaved (floor, subject, floor, subject, ...),
    so a burst of load elsewhere hits both alike. Each value: a callable returning a Sample."""
    series = {name: Series() for name in commands}
    for _ in range(repeat):
        for name, call in commands.items():
            series[name].samples.append(call())
    return series


def python(*args: str) -> list[str]:
    """This interpreter (the local side's .venv), as the graph's rules run the scripts."""
    return [sys.executable, *args]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
