#!/bin/sh
# One training attempt of a run folder: sh run.sh [LLAMAFACTORY_CLI]
# Uploaded by launch.py with lib.sh's functions in front of this part. It resumes
# from the newest complete checkpoint in output/, so a second start never goes back to step 0;
# overwrite_output_dir=false then keeps output/trainer_log.jsonl.
cli=${1:-llamafactory-cli}
cd "$(dirname "$0")" || exit 1
echo $$ >pid
# How many processes train (train.env, from the pod's gpu_count or processes): LLaMA-Factory
# starts torchrun itself with NPROC_PER_NODE processes when FORCE_TORCHRUN=1. It calls torchrun
# by name, which lives beside llamafactory-cli in the same environment: that folder goes first
# on PATH (a non-interactive shell, or the local executor, may not have it there).
if [ -f train.env ]; then
  set -a
  # shellcheck source=/dev/null
  . ./train.env
  set +a
fi
case $cli in */*) PATH="$(cd "$(dirname "$cli")" && pwd -P):$PATH" && export PATH ;; esac
last=$(newest_checkpoint)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -n "$last" ]; then
  set -- "resume_from_checkpoint=output/checkpoint-$last" overwrite_output_dir=false
  echo "== $now resuming from output/checkpoint-$last" >>train.log
else
  set -- overwrite_output_dir=true
  echo "== $now starting" >>train.log
fi
# One training at a time in a pod's remote_dir: a second run waits here for the GPU, and says so
# (waiting_for, which poll.sh reports). The lock is held by the trainer's processes too, so it
# is free when the last of them ends. Slurm schedules its own jobs.
if [ -z "${SLURM_JOB_ID:-}" ] && command -v flock >/dev/null 2>&1; then
  exec 8>>../.train.lock
  rm -f waiting_for
  if ! flock -n 8; then
    other=$(cat ../.train.owner 2>/dev/null)
    echo "${other:-another run}" >waiting_for
    echo "== $now waiting: ${other:-another run} is training on this pod; this run starts after it" >>train.log
    flock 8
    rm -f waiting_for
  fi
  basename "$(pwd -P)" >../.train.owner
fi
echo "start $(date +%s) ${last:-0}" >>attempts.log
"$cli" train train.yaml "$@" >>train.log 2>&1 </dev/null
rc=$?
# No trainer outlives its attempt. When llamafactory-cli alone is stopped (the guard's budget stop
# signals run.sh's children), the torchrun it started lives on, with its workers, training and
# billing unseen. torchrun is still in this script's process group (tmux and setsid make run.sh
# its leader); SIGTERM makes it stop its workers (each in a session of its own) and exit.
if command -v pgrep >/dev/null 2>&1 && [ "$(ps -o pgid= -p $$ | tr -d ' ')" = "$$" ]; then
  trap '' TERM
  group=$(pgrep -g $$)
  kill -TERM 0 2>/dev/null
  i=0
  while [ $i -lt 60 ]; do
    left=""
    for p in $group; do
      if [ "$p" != $$ ] && kill -0 "$p" 2>/dev/null; then left=1; fi
    done
    [ -z "$left" ] && break
    sleep 1
    i=$((i + 1))
  done
  trap - TERM
fi
echo "end $(date +%s) $rc" >>attempts.log
echo "$rc" >exit_code.tmp && mv exit_code.tmp exit_code
exit $rc
