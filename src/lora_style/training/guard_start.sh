# shellcheck shell=sh
# Start the pod's guard detached: guard_start.sh REMOTE_DIR IDLE_SECONDS API_URL GUARD_SCRIPT
# (after lib.sh). GUARD_SCRIPT is guard.sh's text (with lib.sh), written to REMOTE_DIR/.guard.sh;
# the guard keeps one instance per pod itself. Prints @@guard, and @@guard_failed with what a
# guard wrote when it could not stop this pod (it keeps trying; the laptop says so loudly).
dir=$(expand_home "$1")
mkdir -p "$dir" && cd "$dir" || exit 1
[ -f .guard_stop_failed ] && echo "@@guard_failed $(cat .guard_stop_failed)"
printf '%s' "$4" >.guard.sh
if command -v setsid >/dev/null 2>&1; then
  setsid nohup sh .guard.sh "$(pwd -P)" "$2" "$3" >/dev/null 2>&1 </dev/null &
else
  nohup sh .guard.sh "$(pwd -P)" "$2" "$3" >/dev/null 2>&1 </dev/null &
fi
echo "@@guard"
