"""Progress while a real download runs: rsync over the test sshd, lines reaching stderr a few seconds
apart. The rest of the progress tests (rsync's output replayed, the hub's bars, the quantisation)
are tests/graph/test_progress.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from lora_style.training.progress import PROGRESS_EVERY


@pytest.mark.slow
def test_a_long_download_shows_its_progress_while_it_runs(sshd, tmp_path):
    """200 MB through the test pod at 16 MiB/s (about 13 s): lines reach stderr as it goes."""
    big = tmp_path / "adapter_model.safetensors"
    with open(big, "wb") as handle:
        handle.truncate(200 * 2**20)  # sparse here; rsync sends every byte
    fetch = (
        "import sys\nfrom pathlib import Path\nfrom lora_style.training.machines import make_executor\n"
        "from lora_style.training.settings import load_settings\n"
        "make_executor(load_settings(sys.argv[1])).get(sys.argv[2], Path(sys.argv[3]), "
        "bwlimit_kib=16384)\n"
    )
    pod = sshd.pod(tmp_path, "/bin/true")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", fetch, json.dumps(pod), str(big), str(tmp_path / "got")],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    seen = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stderr]
    assert proc.wait() == 0, seen
    ended = time.monotonic() - start
    assert (tmp_path / "got").stat().st_size == 200 * 2**20
    status = re.compile(r"^downloading adapter_model\.safetensors: [\d,]+ +(\d+)% ")
    assert all(status.match(line) for _, line in seen), seen
    percents = [int(status.match(line)[1]) for _, line in seen]
    during = [t for (t, _), pct in zip(seen, percents) if pct < 100 and t < ended - 1]
    assert len(during) >= 2, f"progress came only at the end: {seen} (ended at {ended:.1f} s)"
    assert percents == sorted(percents) and percents[-1] == 100, seen
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert all(gap > PROGRESS_EVERY - 1.5 for gap in gaps), f"not throttled: {seen}"
