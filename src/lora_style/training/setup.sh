# shellcheck shell=sh
# Bring a fresh pod up to what training needs: setup.sh REMOTE_DIR [NUMBER COMMAND]... (after lib.sh).
# Runs each COMMAND of preflight's setup plan, logging it and its exit status to
# REMOTE_DIR/lora-pipeline-setup.log, and prints `@@step NUMBER STATUS`; exits 1 if any failed.
dir=$(expand_home "$1")
shift
mkdir -p "$dir"
log="$dir/lora-pipeline-setup.log"
status=0
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) setup" >>"$log"
while [ $# -ge 2 ]; do
  number=$1 command=$2
  shift 2
  printf '$ %s\n' "$command" >>"$log"
  sh -c "$command" >>"$log" 2>&1
  rc=$?
  echo "@@step $number $rc"
  echo "exit $rc" >>"$log"
  [ $rc = 0 ] || status=1
done
exit $status
