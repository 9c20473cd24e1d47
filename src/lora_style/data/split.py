"""The graph's held-out split (data/validate.py writes both sides): by a hash of each normalised
example, so no edit of one example moves another across."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lora_style.fileio import write_atomic

# The held-out split: an example goes to eval.jsonl when the first 8 bytes of the blake2b digest
# of its normalised line, read as a fraction of 2**64, fall below val_size. It depends on nothing
# but the example itself, so appending, deleting or editing one example never moves another
# across (LLaMA-Factory's own val_size split reshuffles everything on any edit), and duplicates
# land on the same side (no copy of a held-out example is trained on).
SPLIT = "blake2b-128 of the normalised line, first 8 bytes / 2**64 < val_size -> eval"


def split_key(line: bytes) -> bytes:
    """The digest an example is split (and its duplicates found) by: of its normalised line."""
    return hashlib.blake2b(line, digest_size=16).digest()


def held_out(digest: bytes, val_size: float) -> bool:
    return int.from_bytes(digest[:8], "big") < val_size * 2**64


FALLBACK = (
    "the fraction held out none of these few examples, so the one with the lowest hash is held "
    "out (it moves back only when an example with a lower hash is added)"
)


def hold_out_lowest(train: Path, held: Path) -> int:
    """Too few examples for val_size to hold out any (40 at 5%): the example with the lowest
    hash (and its duplicates) goes to the held-out side, so evaluation has something to read.
    Only small files get here; they are read whole. Returns how many lines moved."""
    lines = train.read_bytes().splitlines(keepends=True)
    if len(lines) < 2:
        return 0
    lowest = min(lines, key=split_key)
    kept = [line for line in lines if line != lowest]
    write_atomic(train, b"".join(kept))
    write_atomic(held, lowest * (len(lines) - len(kept)))
    return len(lines) - len(kept)
