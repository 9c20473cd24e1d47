#!/bin/sh
# The pod's guard: guard.sh REMOTE_DIR IDLE_SECONDS API_URL (lib.sh's functions in front).
# launch.sh starts it detached next to a training; one runs per pod (a lock in REMOTE_DIR). Every
# few seconds it looks at each run folder in REMOTE_DIR:
#  - a live attempt whose run has a budget (budget_seconds, written at upload from max_usd and
#    max_hours) and has trained that long in all its attempts is stopped: budget_cut is written
#    first, then the trainer is sent SIGTERM, so run.sh records its exit and the laptop fetches
#    the best checkpoint so far instead of resuming it;
#  - when nothing has trained for IDLE_SECONDS (and no download holds the pod: .hold), it stops
#    the pod through RunPod's API v2 (POST API_URL/pods/ID/action {"action":"stop"}) with the
#    pod-scoped key RunPod gives every pod (RUNPOD_POD_ID, RUNPOD_API_KEY; read from the
#    container's first process when this shell lacks them), else with `runpodctl pod stop ID`
#    (RunPod's images ship it), and ends. A stop that fails both ways is tried again with backoff
#    for as long as the pod is up (the guard never leaves an idle pod billing); .guard_stop_failed
#    says so to the next job that reaches the pod (guard_start.sh). With IDLE_SECONDS 0 (no rented
#    pod) it only keeps budgets, and ends when nothing trains.
# What it does goes to REMOTE_DIR/guard.log. The key never reaches a command line or a file.
dir=$(expand_home "$1")
idle=${2:-0} api=${3:-https://api.runpod.io/v2}
cd "$dir" || exit 1
if command -v flock >/dev/null 2>&1; then
  exec 8>.guard.lock
  flock -n 8 || exit 0
fi
log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >>guard.log; }

# used_seconds NOW: training seconds of all attempts of the run folder in the current directory.
used_seconds() {
  [ -f attempts.log ] || {
    echo 0
    return
  }
  awk -v now="$1" '$1 == "start" { s = $2; open = 1 } $1 == "end" { t += $2 - s; open = 0 }
    END { if (open) t += now - s; print t + 0 }' attempts.log
}

# pod_env NAME: a variable of the pod's container, from this shell or its first process.
pod_env() {
  eval "value=\${$1:-}"
  if [ -z "$value" ] && [ -r /proc/1/environ ]; then
    value=$(tr '\000' '\n' </proc/1/environ | sed -n "s/^$1=//p" | head -n 1)
  fi
  printf '%s' "$value"
}

# stop_by_api ID: RunPod's API v2 with the pod-scoped key; the header comes from stdin (-H @-),
# never from the command line.
stop_by_api() {
  if command -v curl >/dev/null 2>&1; then
    printf 'Authorization: Bearer %s\n' "$(pod_env RUNPOD_API_KEY)" |
      curl -fsS -m 60 -X POST -H @- -H 'Content-Type: application/json' \
        --data '{"action":"stop"}' "$api/pods/$1/action" >>guard.log 2>&1
  else
    RUNPOD_API_KEY=$(pod_env RUNPOD_API_KEY) python3 -c '
import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1], method="POST", data=b"{\"action\":\"stop\"}", headers={
    "Authorization": "Bearer " + os.environ["RUNPOD_API_KEY"], "Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=60)' "$api/pods/$1/action" >>guard.log 2>&1
  fi
}

# stop_pod: stop this pod; each way is logged before it is tried, since a stop that works ends
# this process with the container.
stop_pod() {
  id=$(pod_env RUNPOD_POD_ID)
  if [ -z "$id" ]; then
    log "idle, but RUNPOD_POD_ID is missing: cannot stop this pod"
    return 1
  fi
  rm -f .guard_stop_failed
  if [ -n "$(pod_env RUNPOD_API_KEY)" ]; then
    log "idle for ${idle}s: stopping pod $id through RunPod's API v2"
    stop_by_api "$id" && return 0
  fi
  if command -v runpodctl >/dev/null 2>&1; then
    log "idle for ${idle}s: stopping pod $id with runpodctl"
    RUNPOD_API_KEY=$(pod_env RUNPOD_API_KEY) runpodctl pod stop "$id" >>guard.log 2>&1 && return 0
  fi
  log "could not stop pod $id (API v2, runpodctl): trying again in ${backoff}s"
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) the guard could not stop pod $id when idle (see guard.log)" \
    >.guard_stop_failed
  return 1
}

busy_at=$(date +%s)
backoff=2
tick=$((idle / 6))
[ "$tick" -lt 1 ] && tick=1
[ "$tick" -gt 5 ] && tick=5
log "guarding $dir (idle stop after ${idle}s)"
while :; do
  now=$(date +%s)
  training=0
  for run in */; do
    run=${run%/}
    [ -f "$run/pid" ] || continue
    pid=$(cat "$run/pid")
    (cd "$run" && attempt_alive "$pid") || continue
    training=1
    if [ ! -f "$run/budget_seconds" ] || [ -f "$run/budget_cut" ]; then continue; fi
    used=$(cd "$run" && used_seconds "$now")
    if [ "$used" -ge "$(cat "$run/budget_seconds")" ]; then
      log "$run: budget of $(cat "$run/budget_seconds")s reached after ${used}s: stopping its training"
      echo "$now $used" >"$run/budget_cut"
      if ! pkill -TERM -P "$pid" 2>/dev/null; then
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill -TERM "$child"; done
      fi
    fi
  done
  if [ -f .hold ] && [ "$(cat .hold)" -gt "$now" ] 2>/dev/null; then training=1; fi
  [ "$training" = 1 ] && busy_at=$now
  if [ "$idle" -gt 0 ] && [ "$training" = 0 ] && [ $((now - busy_at)) -ge "$idle" ]; then
    if stop_pod; then
      log "pod stopped"
      exit 0
    fi
    # Never give up while the pod is up: again after a growing pause (at most 5 min).
    sleep "$backoff"
    backoff=$((backoff * 2))
    [ "$backoff" -gt 300 ] && backoff=300
    continue
  fi
  if [ "$idle" -le 0 ] && [ "$training" = 0 ]; then
    log "nothing trains: done"
    exit 0
  fi
  sleep "$tick"
done
