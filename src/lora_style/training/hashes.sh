# shellcheck shell=sh
# Size and sha256 of files in a run folder: hashes.sh RUN_DIR FILE... (after lib.sh).
# Prints `@@file SIZE SHA256 FILE` or `@@missing FILE` for each.
enter_run "$1"
shift
digest() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1"; else shasum -a 256 "$1"; fi
}
for f in "$@"; do
  if [ -f "$f" ]; then
    echo "@@file $(wc -c <"$f" | tr -d ' ') $(digest "$f" | cut -d ' ' -f 1) $f"
  else
    echo "@@missing $f"
  fi
done
