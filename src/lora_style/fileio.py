"""Ground-floor file helpers every stage shares: atomic writes, JSON reading with clear errors,
sha256, and folders that land whole (built in a staging folder, then renamed into place).

Nothing here imports another module of the project, so any script can use it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: the message names the file or key, and what to change.

    Every CLI prints ``error: <message>`` for these and exits 1; anything else is a bug."""


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: dict) -> None:
    """A JSON file, indented, written atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "") -> dict:
    """A JSON object from a file, or `error` with the file, the line and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing" + (f" ({what})" if what else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise error(f"{path}{line}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def count_lines(path: str | os.PathLike) -> int:
    """Non-empty lines of a file (a JSONL file's records), without parsing them."""
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A path to build `target` at, in a private scratch folder beside it (same filesystem), for
    ``land()`` to rename into place. The path does not exist yet (mlx_lm.convert insists); create
    it, or let the tool that writes it do so. Whatever is left of the scratch folder afterwards
    (an error, Ctrl-C) is removed, so a half-built folder is never taken for a finished one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield scratch / target.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def land(stage: Path, target: str | os.PathLike) -> None:
    """Rename a staged folder (or file) into place: it appears complete or not at all.

    An empty folder at `target` (Snakemake makes output folders) is replaced; a non-empty one
    makes os.replace fail, and the caller says what to do."""
    os.replace(stage, target)
