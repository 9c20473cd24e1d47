# shellcheck shell=sh
# Keep the pod's guard from stopping the pod for idleness: hold.sh REMOTE_DIR SECONDS (after lib.sh).
# Writes the deadline (now + SECONDS) to REMOTE_DIR/.hold; SECONDS 0 removes it.
dir=$(expand_home "$1")
if [ "$2" -gt 0 ]; then
  mkdir -p "$dir" && echo $(($(date +%s) + $2)) >"$dir/.hold"
else
  rm -f "$dir/.hold"
fi
