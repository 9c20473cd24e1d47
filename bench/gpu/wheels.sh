#!/usr/bin/env bash
# `make gpu-wheels`: the wheels the GPU check carries (bench/gpu/wheels.txt) into .whl/, for the
# GPU machine's CPython 3.12 on manylinux x86_64, bitsandbytes slimmed to the CPU and CUDA 13.0
# libraries (slim_wheel.py); then the size of what one device call sends: the wheels plus the
# working tree (tracked and untracked files that git does not ignore), against its 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
dest=.whl
rm -rf "$dest"
mkdir -p "$dest"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" -r bench/gpu/wheels.txt
"$py" bench/gpu/slim_wheel.py "$dest"/bitsandbytes-*.whl --keep cpu cuda130
"$py" - "$dest" <<'PY'
import os, subprocess, sys
dest = sys.argv[1]
MiB = 2**20
wheels = sorted(os.path.join(dest, n) for n in os.listdir(dest) if n.endswith(".whl"))
for path in wheels:
    print(f"  {os.path.getsize(path) / MiB:6.2f} MiB  {os.path.basename(path)}")
total = sum(map(os.path.getsize, wheels))
listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"],
                        capture_output=True, check=True).stdout.split(b"\0")
tree = sum(os.path.getsize(p) for p in listed if p and os.path.isfile(p))
print(f"{dest}/: {len(wheels)} wheels, {total / MiB:.1f} MiB; working tree {tree / MiB:.1f} MiB; "
      f"a device call carries {(total + tree) / MiB:.1f} of 64 MiB")
sys.exit(0 if total + tree <= 64 * MiB else 1)
PY
