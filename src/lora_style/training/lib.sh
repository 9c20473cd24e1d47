# shellcheck shell=sh
# Functions shared by the pod-side scripts. shell.py sends this file ahead of each script, and the
# run.sh uploaded into a run folder carries a copy, so nothing on the pod depends on this project.
# By hand on a pod: cat lib.sh state.sh | sh -s -- REMOTE_DIR RUN_ID

# expand_home PATH: PATH with a leading ~ expanded (a quoted ~ stays literal in sh).
expand_home() {
  case $1 in
    \~) printf '%s\n' "$HOME" ;;
    \~/*) printf '%s\n' "$HOME/${1#\~/}" ;;
    *) printf '%s\n' "$1" ;;
  esac
}

# enter_run DIR: cd into a run folder, or say it is not there and end the script.
enter_run() {
  cd "$1" 2>/dev/null || { echo "@@no_run_dir"; exit 0; }
}

# complete_checkpoints: N of every output/checkpoint-N whose trainer_state.json exists (the
# Trainer writes it last, so a checkpoint cut off mid-save is never counted), one a line.
complete_checkpoints() {
  for d in output/checkpoint-*; do
    [ -f "$d/trainer_state.json" ] || continue
    n=${d##*-}
    case $n in '' | *[!0-9]*) continue ;; esac
    echo "$n"
  done
}

# newest_checkpoint: the highest of them, or nothing.
newest_checkpoint() {
  complete_checkpoints | sort -n | tail -n 1
}

# attempt_alive PID: PID runs this folder's own run.sh by its absolute path (launch.sh starts
# every attempt by that path, $(pwd -P)/run.sh), not a process that got the pid after a pod
# restart, another run's run.sh included.
attempt_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  if [ -r "/proc/$1/cmdline" ]; then
    args=$(tr '\000' ' ' <"/proc/$1/cmdline")
  else
    args=$(ps -o args= -p "$1" 2>/dev/null)
  fi
  case " $args " in *" $(pwd -P)/run.sh "*) return 0 ;; esac
  return 1
}

# slurm_state JOB: `STATE PARTITION REASON` of a Slurm job (PENDING, RUNNING, TIMEOUT, ...; why
# it waits, spaces as _) while Slurm remembers it (squeue), else from the cluster's accounting
# (sacct, where it keeps one), else `GONE - -`; `UNKNOWN - -` when Slurm does not answer and
# `NOSLURM - -` where squeue is not found.
slurm_state() {
  command -v squeue >/dev/null 2>&1 || {
    echo "NOSLURM - -"
    return
  }
  out=$(squeue -h -t all -j "$1" -o '%T|%P|%r' 2>&1)
  src=$?
  line=$(printf '%s\n' "$out" | grep '|' | head -n 1)
  if [ -z "$line" ]; then
    if [ $src != 0 ] && ! printf '%s\n' "$out" | grep -qi 'invalid job id'; then
      echo "UNKNOWN - -"
      return
    fi
    line=$(sacct -n -X -P -j "$1" -o State,Partition 2>/dev/null | head -n 1)
    [ -n "$line" ] || line="GONE|-"
  fi
  printf '%s\n' "$line" | awk -F'|' '{ split($1, s, " "); r = $3; gsub(/[[:space:]]+/, "_", r)
    print s[1], ($2 == "" ? "-" : $2), (r == "" ? "-" : r) }'
}

# slurm_alive STATE: the job may still train (queued, running, being requeued or ended), or
# Slurm does not answer (UNKNOWN): never submit a second job beside one that may run.
slurm_alive() {
  case $1 in
    PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_HOLD | \
      REQUEUE_FED | RESIZING | SIGNALING | STAGE_OUT | RESV_DEL_HOLD | UNKNOWN) return 0 ;;
  esac
  return 1
}

# run_state: the state of the run folder in the current directory, as one @@run line.
run_state() {
  last=$(newest_checkpoint)
  alive=0 pid="" rc=""
  [ -f pid ] && pid=$(cat pid)
  # A run under Slurm (slurm_job: its newest job) lives on a compute node: Slurm says if it is
  # alive, and the job's state, partition and why it waits go on the line.
  job="" slurm=""
  if [ -f slurm_job ]; then
    job=$(cat slurm_job)
    read -r state partition reason <<STATE
$(slurm_state "$job")
STATE
    slurm_alive "$state" && alive=1
    slurm=" job=$job slurm=$state partition=$partition reason=$reason"
  elif [ -n "$pid" ] && attempt_alive "$pid"; then alive=1; fi
  [ -f exit_code ] && rc=$(cat exit_code)
  # Launched once an attempt started (run.sh writes pid first): an upload cut off after run.sh
  # arrived is not a training that died.
  launched=0
  [ -f pid ] || [ -f attempts.log ] || [ -f slurm_job ] && launched=1
  final=0
  [ -f output/trainer_state.json ] && final=1
  cut=0
  [ -f budget_cut ] && cut=1
  # Free KiB on the run folder's disk: a training that ended on a full disk is told apart.
  free_kb=$(df -Pk . 2>/dev/null | awk 'NR == 2 { print $4 }')
  echo "@@run launched=$launched alive=$alive pid=$pid rc=$rc checkpoint=$last final=$final cut=$cut free_kb=$free_kb$slurm"
}
