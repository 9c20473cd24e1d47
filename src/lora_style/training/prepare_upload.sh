# shellcheck shell=sh
# Make a run folder for an upload: prepare_upload.sh RUN_DIR RUN (after lib.sh).
# Prints `@@basis DIR` for the newest other folder of the same run with its data (an earlier
# upload, before the data changed), so rsync sends only what changed against it (--copy-dest).
dir=$(expand_home "$1")
mkdir -p "$dir" || exit 1
dir=$(cd "$dir" && pwd -P) || exit 1
# Newest first by the folders' times (ls -t: sh globs do not sort by time); one name a line.
# shellcheck disable=SC2012
ls -dt "$(dirname "$dir")/$2"-*/ 2>/dev/null | while IFS= read -r d; do
  d=${d%/}
  if [ "$d" != "$dir" ] && [ -f "$d/data/train.jsonl" ]; then
    echo "@@basis $d"
    break
  fi
done
