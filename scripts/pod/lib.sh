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

# run_state: the state of the run folder in the current directory, as one @@run line.
run_state() {
  last=$(newest_checkpoint)
  alive=0 pid="" rc=""
  [ -f pid ] && pid=$(cat pid)
  if [ -n "$pid" ] && attempt_alive "$pid"; then alive=1; fi
  [ -f exit_code ] && rc=$(cat exit_code)
  launched=0
  [ -f run.sh ] && launched=1
  final=0
  [ -f output/trainer_state.json ] && final=1
  cut=0
  [ -f budget_cut ] && cut=1
  echo "@@run launched=$launched alive=$alive pid=$pid rc=$rc checkpoint=$last final=$final cut=$cut"
}
