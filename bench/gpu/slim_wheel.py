"""Repack bitsandbytes' wheel with only the native libraries one machine loads.

    python bench/gpu/slim_wheel.py .whl/bitsandbytes-*.whl --keep cpu cuda130

bitsandbytes 0.50 ships one ``libbitsandbytes_<backend>.so`` per CUDA, ROCm and XPU version it
supports: 43 MB compressed, most of it CUDA 11.8-12.8 libraries. It loads the one named after
``torch.version.cuda`` (13.0 -> ``cuda130``), or ``BNB_CUDA_VERSION`` when set; the GPU machine's
torch is 2.11.0+cu130. The wheel keeps its name and everything else (the Python code, the CPU
library the CPU rehearsal loads); RECORD loses the dropped files' lines. The same input gives the
same bytes (entries keep their order, dates and permissions), so `make gpu-wheels` is repeatable.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

NATIVE = re.compile(r"^bitsandbytes/libbitsandbytes_([a-z0-9]+)\.so$")


def dropped(name: str, keep: set[str]) -> bool:
    """A native library of a backend not in `keep` (e.g. {'cpu', 'cuda130'})."""
    match = NATIVE.match(name)
    return bool(match) and match.group(1) not in keep


def slim(wheel: Path, keep: set[str], output: Path) -> list[str]:
    """Write `output` from `wheel` without the other backends' libraries; returns their names."""
    removed = []
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        kept_native = [n for n in names if NATIVE.match(n) and not dropped(n, keep)]
        missing = keep - {NATIVE.match(n).group(1) for n in kept_native}
        if missing:
            raise SystemExit(
                f"error: {wheel.name} has no library for {', '.join(sorted(missing))}; "
                f"it has {', '.join(sorted(NATIVE.match(n).group(1) for n in names if NATIVE.match(n)))}"
            )
        tmp = output.with_name(output.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if dropped(info.filename, keep):
                    removed.append(info.filename)
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode("utf-8").splitlines(keepends=True)
                    data = "".join(line for line in lines if not dropped(line.split(",", 1)[0], keep)).encode(
                        "utf-8"
                    )
                out = zipfile.ZipInfo(info.filename, info.date_time)
                out.external_attr = info.external_attr
                out.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(out, data, compresslevel=9)
    tmp.replace(output)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument(
        "--keep",
        nargs="+",
        default=["cpu", "cuda130"],
        help="backends whose library stays (default: cpu cuda130)",
    )
    parser.add_argument("--output", type=Path, help="default: replace the wheel in place")
    args = parser.parse_args(argv)
    before = args.wheel.stat().st_size
    output = args.output or args.wheel
    removed = slim(args.wheel, set(args.keep), output)
    after = output.stat().st_size
    print(
        f"{output.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
        f"(kept {', '.join(args.keep)}; dropped {len(removed)} libraries)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
