# shellcheck shell=sh
# Submit a run's training to Slurm (after lib.sh):
#   slurm_submit.sh RUN_DIR JOB_NAME LLAMAFACTORY_CLI JOB_SCRIPT [SBATCH_OPTION...]
# Unless the run folder's job (slurm_job) is queued or running (@@already JOB), JOB_SCRIPT (the
# text of slurm_job.sh) is written to RUN_DIR/slurm_job.sh and submitted with sbatch, the
# SBATCH_OPTIONs (partition, GPUs, time, the user's sbatch_args) passed as they are; the job's id
# goes to RUN_DIR/slurm_job. Prints `@@job JOB`, or `@@sbatch_failed RC` with sbatch's words as
# @@sbatch_said lines, @@no_sbatch, @@unknown (Slurm does not answer: whether the job still runs
# cannot be told), or @@busy when another submit of the same folder holds the lock.
enter_run "$1"
name=$2 cli=$3 job_script=$4
shift 4
if command -v flock >/dev/null 2>&1; then
  exec 9>.launch.lock
  flock -n 9 || {
    echo "@@busy"
    exit 0
  }
fi
if [ -f slurm_job ]; then
  job=$(cat slurm_job)
  read -r state _ <<STATE
$(slurm_state "$job")
STATE
  if slurm_alive "$state"; then
    [ "$state" = UNKNOWN ] && echo "@@unknown $job" || echo "@@already $job"
    exit 0
  fi
fi
command -v sbatch >/dev/null 2>&1 || {
  echo "@@no_sbatch"
  exit 0
}
rm -f exit_code pid
# sbatch hands its whole environment to the job, and Slurm keeps a job's environment in its state
# files: no secret of this shell goes along.
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN RUNPOD_API_KEY
printf '%s' "$job_script" >slurm_job.sh
here=$(pwd -P)
out=$(sbatch --parsable --job-name="$name" --chdir="$here" --output="$here/slurm-%j.out" \
  --open-mode=append "$@" "$here/slurm_job.sh" "$cli" 2>.sbatch.err 9>&-)
rc=$?
job=$(printf '%s\n' "$out" | sed -n 's/^\([0-9][0-9_]*\).*/\1/p' | tail -n 1)
if [ $rc != 0 ] || [ -z "$job" ]; then
  echo "@@sbatch_failed $rc"
  tail -n 5 .sbatch.err | sed 's/^/@@sbatch_said /'
  exit 0
fi
echo "$job" >slurm_job.tmp && mv slurm_job.tmp slurm_job
echo "@@job $job"
