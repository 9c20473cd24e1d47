"""Progress on every long step: what a user sees on the terminal while a download runs.

A transfer to or from the pod shows rsync's own progress as lines, a few seconds apart, while it
runs; a quick one says nothing. The base model's download shows huggingface_hub's bars even
though a job's stderr is a pipe (scripts/logged.sh), and its quantisation a line per stage and
what it has written so far.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time

from huggingface_hub.utils import tqdm as hf_tqdm
from huggingface_hub.utils.tqdm import _create_progress_bar  # what snapshot_download calls

from lora_style import hub
from lora_style.mlx import quantize_base
from lora_style.training.progress import PROGRESS_EVERY, QUIET_LIMIT, TransferProgress

# ---------------------------------------------------------------------------- rsync's progress

# What rsync --progress writes for one file (rsync 3.x), cut into the writes it makes a second apart.
RSYNC_WRITES = (
    [
        "receiving incremental file list\nadapter_model.safetensors\n",
        "\r         32,768   0%    0.00kB/s    0:00:00  ",
    ]
    + [
        f"\r    {mb * 1_048_576:>11,}  {mb * 100 // 64:>2}%   16.00MB/s    0:00:{64 - mb:02d}  "
        for mb in range(16, 64, 16)
    ]
    + ["\r     67,108,864 100%   16.00MB/s    0:00:04 (xfr#1, to-chk=0/1)\n"]
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def replay(writes, seconds_apart, clock=None):
    clock = clock or Clock()
    lines = []
    progress = TransferProgress("downloading", lines.append, clock=clock)
    for text in writes:
        progress.feed(text)
        progress.quiet()
        clock.now += seconds_apart
    progress.close()
    return lines


def test_a_quick_transfer_says_nothing():
    assert replay(RSYNC_WRITES, 0.01) == []


def test_a_long_transfer_says_where_it_is_every_few_seconds_and_when_it_is_done():
    lines = replay(RSYNC_WRITES, PROGRESS_EVERY * 0.6)
    # One status in two gets through the throttle; the file's 100% always does once one did.
    assert lines == [
        "downloading adapter_model.safetensors: 16,777,216 25% 16.00MB/s 0:00:48",
        "downloading adapter_model.safetensors: 50,331,648 75% 16.00MB/s 0:00:16",
        "downloading adapter_model.safetensors: 67,108,864 100% 16.00MB/s 0:00:04 (xfr#1, to-chk=0/1)",
    ]


def test_a_stalled_transfer_still_says_something_every_thirty_seconds():
    clock = Clock()
    lines = []
    progress = TransferProgress("uploading", lines.append, clock=clock)
    progress.feed(RSYNC_WRITES[0] + RSYNC_WRITES[1] + RSYNC_WRITES[2])
    for _ in range(int(2 * QUIET_LIMIT) + 1):  # rsync silent: the relay looks once a second
        clock.now += 1
        progress.quiet()
    assert (
        lines
        == [
            f"uploading adapter_model.safetensors: 16,777,216 25% 16.00MB/s 0:00:48 "
            f"(no news for {QUIET_LIMIT:.0f} s)"
        ]
        * 2
    )


# ---------------------------------------------------------------------------- the base model


def test_the_hubs_progress_bars_show_although_a_jobs_output_is_a_pipe():
    """huggingface_hub builds its bars with tqdm's "only on a terminal"; a job's stderr is a
    pipe to the terminal and the log (scripts/logged.sh), so they would never show."""
    shown = {}
    for name, cls in {"default": hf_tqdm, "ours": hub.ProgressBar}.items():
        pipe = io.StringIO()  # not a terminal
        bar = _create_progress_bar(
            cls=cls,
            log_level=logging.WARNING,
            name="huggingface_hub",
            desc="Downloading bytes",
            total=2**30,
            unit="B",
            unit_scale=True,
            file=pipe,
        )
        for _ in range(512):  # half of it, in a blink
            bar.update(2**20)
        bar.close()
        shown[name] = pipe.getvalue()
    assert shown["default"] == ""
    # Shown, and refreshed at most every BAR_SECONDS: the start, then where it stopped.
    assert shown["ours"].split("\r")[1:] == [
        "Downloading bytes:   0%|          | 0.00/1.07G [00:00<?, ?B/s]",
        shown["ours"].split("\r")[-1],
    ]
    assert "Downloading bytes:  50%|#####     | 537M/1.07G" in shown["ours"]


def test_converting_says_what_it_has_written_while_it_runs(tmp_path):
    """mlx_lm.convert writes the quantised weights at its end, silently: a line comes anyway."""
    lines = []
    with quantize_base.watching(tmp_path, lines.append, every=0.2):
        (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 3_000_000)
        time.sleep(0.5)
    assert len(lines) >= 2
    assert re.fullmatch(
        r"converting: 3\.0 MB of 4-bit weights written in 1 file \(0 min \d\d s\)", lines[-1]
    ), lines  # (the seconds: under load the watcher's last look may come a second late)


def test_quantising_says_each_stage_through_a_pipe(tiny_model, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_style.mlx.quantize_base",
            "--hf-path",
            str(tiny_model),
            "--mlx-path",
            str(tmp_path / "tiny-4bit"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stdout
    stages = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith(("[INFO]", "mlx_lm.convert", str(tmp_path)))
    ]
    assert [s.split()[0] for s in stages] == [
        "mlx_lm.convert",
        "[INFO]",
        "[INFO]",
        "[INFO]",
        f"{tmp_path}/tiny-4bit:",
    ], stages
    assert "[INFO] Quantizing" in stages
