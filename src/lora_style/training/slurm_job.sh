#!/bin/sh
# One Slurm job of a run folder: one training attempt, on the job's nodes (after lib.sh).
# slurm_submit.sh writes it into the run folder and submits it with `sbatch --chdir=RUN_DIR`, so
# Slurm runs it there as `slurm_job.sh LLAMAFACTORY_CLI`. It hands over to the folder's run.sh by
# its absolute path (what lib.sh's attempt_alive looks for), which resumes from the newest complete
# checkpoint: a requeued or resubmitted job goes on where the last one stopped. The run folder must
# be on a filesystem that the compute nodes share with the login node.
here=$(pwd -P)
cli=${1:-llamafactory-cli}
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) Slurm job ${SLURM_JOB_ID:-?} on $(hostname)" >>train.log
nodes=${SLURM_JOB_NUM_NODES:-1}
if [ "$nodes" -le 1 ]; then
  exec sh "$here/run.sh" "$cli"
fi
# Several nodes, one training: srun starts run.sh once per node, and LLaMA-Factory's launcher
# runs torchrun across them with NNODES, NODE_RANK (the node's SLURM_NODEID), MASTER_ADDR (the
# first node's address: node names need not resolve) and MASTER_PORT. Node 0 trains in the run
# folder and keeps its books (pid, exit_code, attempts.log, train.log); node N in node-N/, which
# shares the run's inputs and output/ (the Trainer's rank 0 alone writes checkpoints there).
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
addr=$(scontrol show node "$first" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
NNODES=$nodes MASTER_ADDR=${addr:-$first} MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))
FORCE_TORCHRUN=1
export NNODES MASTER_ADDR MASTER_PORT FORCE_TORCHRUN
mkdir -p output # before it is linked: every node must see the same checkpoints
i=1
while [ "$i" -lt "$nodes" ]; do
  mkdir -p "node-$i"
  for f in *; do
    case $f in
      node-* | run.sh | pid | exit_code* | attempts.log | train.log | slurm* | launch.json | waiting_for) ;;
      *) ln -sfn "../$f" "node-$i/$f" ;;
    esac
  done
  cp run.sh "node-$i/run.sh"
  i=$((i + 1))
done
# shellcheck disable=SC2016 # expanded by the sh that srun starts on each node
exec srun --kill-on-bad-exit=1 --ntasks-per-node=1 sh -c \
  'd=$1; [ "$SLURM_NODEID" = 0 ] || d=$1/node-$SLURM_NODEID; NODE_RANK=$SLURM_NODEID exec sh "$d/run.sh" "$2"' \
  sh "$here" "$cli"
