# shellcheck shell=sh
# One look at a running training: poll.sh RUN_DIR LOG_OFFSET TRAINER_LOG_OFFSET CAP (after lib.sh).
# Prints run_state's @@run line (and @@waiting RUN_ID while another run holds the GPU), then for
# train.log and output/trainer_log.jsonl in turn a line `@@chunk OFFSET N` followed by the N raw
# bytes the file gained since OFFSET (at most CAP; a file shorter than OFFSET was replaced and is
# read from 0).
enter_run "$1"
run_state
[ -f waiting_for ] && echo "@@waiting $(cat waiting_for)"
cap=$4
chunk() {
  size=0
  [ -f "$1" ] && size=$(wc -c <"$1" | tr -d ' ')
  off=$2
  [ "$size" -lt "$off" ] && off=0
  n=$((size - off))
  [ "$n" -gt "$cap" ] && n=$cap
  echo "@@chunk $off $n"
  if [ "$n" -gt 0 ]; then tail -c +$((off + 1)) "$1" | head -c "$n"; fi
}
chunk train.log "$2"
chunk output/trainer_log.jsonl "$3"
