"""A long upload or download as lines for the terminal and the job's log: rsync's own
``--progress`` output, which rewrites one status line with \r about once a second, relayed as
``downloading NAME: STATUS`` lines (the executor's put/get)."""

from __future__ import annotations

import codecs
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable

# A transfer's progress (rsync --progress, which updates about once a second) reaches the user
# as a line at most every PROGRESS_EVERY seconds, and at least every QUIET_LIMIT seconds while
# it lasts, also when nothing moves. A transfer shorter than PROGRESS_EVERY says nothing.
PROGRESS_EVERY = 5.0
QUIET_LIMIT = 30.0


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# One update of rsync --progress: bytes so far and a percentage, then rate and time, e.g.
# "  52,428,800  25%   16.00MB/s    0:00:09" (the last of a file adds "(xfr#1, to-chk=0/1)").
RSYNC_PROGRESS = re.compile(r"^[\d,.]+[KMGT]?\s+\d+%")
# A status is whole when it ends with its time: rsync writes each in one go, "\r" first.
RSYNC_STATUS_WHOLE = re.compile(r"^\s*[\d,.]+[KMGT]?\s+\d+%.*\d+:\d\d:\d\d\s*$")
RSYNC_CHATTER = {
    "sending incremental file list",
    "receiving incremental file list",
    "receiving file list ...",
    "building file list ...",
    "done",
    "./",
}
# --stats: the bytes that crossed the wire, the one line rsync 3 and openrsync both print
# ("sent 1,234 bytes  received 56 bytes  ..."), and the other lines of the block, not file names.
RSYNC_SENT = re.compile(r"^sent ([\d,.]+)([KMGT]?) bytes received ([\d,.]+)([KMGT]?) bytes")
RSYNC_STATS = re.compile(
    r"^(Number of|Total |Literal data|Matched data|Unmatched data|File list"
    r"|total size is|speedup is)"
)


def _bytes(number: str, unit: str) -> int:
    return int(float(number.replace(",", "")) * 1024 ** " KMGT".index(unit or " "))


class TransferProgress:
    """rsync --progress output as lines for a log. rsync writes a file's name on a line, then
    rewrites one status line with \r about once a second; here a status becomes a line
    `downloading NAME: STATUS` at most every `every` seconds, the file's last status (100%) when
    one of its earlier ones was shown, and `quiet()` says where things stand when nothing came
    for `quiet_limit` seconds."""

    def __init__(
        self,
        direction: str,
        say: Callable[[str], None],
        every: float = PROGRESS_EVERY,
        quiet_limit: float = QUIET_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.direction, self.say, self.every, self.quiet_limit = direction, say, every, quiet_limit
        self.clock = clock
        self.name = ""  # the file being copied
        self.status = ""  # its latest status
        self.shown = False  # whether a status of this file was shown
        self.last_said = clock()
        self._pending = ""  # the text after the last \r or \n
        self._early = None  # ... when it was taken as a whole status already
        self.sent = self.received = 0  # bytes on the wire, from rsync --stats

    def feed(self, text: str) -> None:
        """Some output of rsync, cut anywhere."""
        *pieces, self._pending = re.split(r"[\r\n]", self._pending + text)
        if pieces and pieces[0] == self._early:
            pieces.pop(0)
        if pieces or self._pending != self._early:
            self._early = None
        for piece in pieces:
            self._piece(" ".join(piece.split()))
        # The latest status has no terminator until the next one comes, a second later.
        if self._early is None and RSYNC_STATUS_WHOLE.match(self._pending):
            self._early = self._pending
            self._piece(" ".join(self._pending.split()))

    def close(self) -> None:
        self.feed("\n")

    def _piece(self, piece: str) -> None:
        if not piece or piece in RSYNC_CHATTER or RSYNC_STATS.match(piece):
            return
        if sent := RSYNC_SENT.match(piece):
            self.sent, self.received = _bytes(*sent.group(1, 2)), _bytes(*sent.group(3, 4))
            return
        if not RSYNC_PROGRESS.match(piece):
            if not piece.endswith("/"):  # a folder of a put is no news
                self.name, self.status, self.shown = piece, "", False
            return
        self.status = piece
        finished = piece.split()[1] == "100%" and "(" in piece
        if (finished and self.shown) or self.clock() - self.last_said >= self.every:
            self._say(piece)
            self.shown = True

    def quiet(self) -> None:
        """Called about once a second: a line when none was said for quiet_limit seconds, so a
        stalled transfer says so too."""
        silent = self.clock() - self.last_said
        if silent >= self.quiet_limit:
            where = self.status or "waiting for the first bytes"
            self._say(f"{where} (no news for {silent:.0f} s)")

    def _say(self, status: str) -> None:
        self.say(f"{self.direction} {self.name or '...'}: {status}")
        self.last_said = self.clock()


def relay_progress(proc: subprocess.Popen, progress: TransferProgress) -> str:
    """Feed the process's stdout to `progress` as it comes, and return its stderr, whole."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    open_fds, stderr = {out, err}, bytearray()
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 1.0)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == err:
                stderr += chunk
            else:
                progress.feed(decoder.decode(chunk))
        progress.quiet()
    progress.feed(decoder.decode(b"", final=True))
    progress.close()
    return stderr.decode("utf-8", "replace")
