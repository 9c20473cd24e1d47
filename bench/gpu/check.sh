#!/usr/bin/env bash
# The GPU check from a bare machine, in one command (see bench/gpu/README.md):
#   bench/gpu/check.sh [--cpu] [check.py's options]
# Installs the carried wheels (.whl/, built here by `make gpu-wheels`) into a folder of their own
# on top of the machine's python3, then runs check.py, whose output is copied to $OUT/check.log.
# PYTHON: the interpreter to use (default python3: on the GPU machine, the one with torch);
# GPU_CHECK_SITE: where the wheels go (default /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/site}
out=${OUT:-bench/gpu/out}
mkdir -p "$out"
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} = 0 ]; then
  echo "error: no wheels in .whl/: run \`make gpu-wheels\` here first, and name .whl in carry" >&2
  exit 2
fi
start=$(date +%s)
rm -rf "$site"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" "${wheels[@]}"
echo "installed ${#wheels[@]} wheels into $site in $(($(date +%s) - start)) s"
# The project's package from its src/ (the machine is bare: no pip install of it), then the wheels.
export PYTHONPATH="$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$py" bench/gpu/check.py --cli "$site/bin/llamafactory-cli" --out "$out" "$@" 2>&1 | tee "$out/check.log"
