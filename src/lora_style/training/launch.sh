# shellcheck shell=sh
# Start a run's training detached (after lib.sh):
#   launch.sh RUN_DIR SESSION LLAMAFACTORY_CLI [IDLE_SECONDS API_URL [SECRETS]]
# Unless an attempt is alive (@@already PID), run.sh starts under tmux (a server of its own,
# -L SESSION: an older server would hand the training its old environment), else setsid nohup,
# else nohup, so a dropped connection or a closed laptop does not stop it. Prints
# `@@detach HOW` and `@@pid PID`; @@busy when another launch of the same folder holds the lock.
# When the run folder has guard.sh (a rented pod, or a budget), the pod's guard is started next to
# the training (it keeps one instance per pod itself) with IDLE_SECONDS and API_URL.
# With SECRETS=stdin, secrets (HF_TOKEN, for a gated base model) arrive on stdin, one NAME=value
# a line, and go into the training's environment only: never an argument (ps shows those), never
# a file.
if [ "${6:-}" = stdin ]; then
  while IFS= read -r line; do
    case $line in
      HF_TOKEN=* | HUGGING_FACE_HUB_TOKEN=*) export "${line?}" ;;
    esac
  done
fi
enter_run "$1"
session=$2 cli=$3
if command -v flock >/dev/null 2>&1; then
  exec 9>.launch.lock
  flock -n 9 || {
    echo "@@busy"
    exit 0
  }
fi
pid=""
[ -f pid ] && pid=$(cat pid)
if [ -n "$pid" ] && attempt_alive "$pid"; then
  echo "@@already $pid"
  exit 0
fi
rm -f exit_code pid
here=$(pwd -P)
started=0
if command -v tmux >/dev/null 2>&1; then
  tmux -L "$session" kill-server 2>/dev/null
  if tmux -L "$session" new-session -d -s "$session" -c "$here" sh "$here/run.sh" "$cli" 9>&-; then
    echo "@@detach tmux"
    started=1
  fi
fi
if [ $started = 0 ]; then
  if command -v setsid >/dev/null 2>&1; then
    setsid nohup sh "$here/run.sh" "$cli" >/dev/null 2>&1 </dev/null 9>&- &
    echo "@@detach setsid nohup"
  else
    nohup sh "$here/run.sh" "$cli" >/dev/null 2>&1 </dev/null 9>&- &
    echo "@@detach nohup"
  fi
fi
i=0
while [ ! -s pid ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
echo "@@pid $(cat pid 2>/dev/null)"
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN # the guard needs no token
if [ -f guard.sh ]; then
  if command -v setsid >/dev/null 2>&1; then
    setsid nohup sh "$here/guard.sh" "$(dirname "$here")" "${4:-0}" "${5:-}" >/dev/null 2>&1 </dev/null 9>&- &
  else
    nohup sh "$here/guard.sh" "$(dirname "$here")" "${4:-0}" "${5:-}" >/dev/null 2>&1 </dev/null 9>&- &
  fi
  echo "@@guard"
fi
