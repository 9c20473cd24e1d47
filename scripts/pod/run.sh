#!/bin/sh
# One training attempt of a run folder: sh run.sh [LLAMAFACTORY_CLI]
# Uploaded by scripts/pod/launch.py with lib.sh's functions in front of this part. It resumes
# from the newest complete checkpoint in output/, so a second start never goes back to step 0;
# overwrite_output_dir=false then keeps output/trainer_log.jsonl.
cli=${1:-llamafactory-cli}
cd "$(dirname "$0")" || exit 1
echo $$ >pid
last=$(newest_checkpoint)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -n "$last" ]; then
  set -- "resume_from_checkpoint=output/checkpoint-$last" overwrite_output_dir=false
  echo "== $now resuming from output/checkpoint-$last" >>train.log
else
  set -- overwrite_output_dir=true
  echo "== $now starting" >>train.log
fi
echo "start $(date +%s) ${last:-0}" >>attempts.log
"$cli" train train.yaml "$@" >>train.log 2>&1 </dev/null
rc=$?
echo "end $(date +%s) $rc" >>attempts.log
echo "$rc" >exit_code.tmp && mv exit_code.tmp exit_code
exit $rc
