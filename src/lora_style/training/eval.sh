# shellcheck shell=sh
# The reference evaluation of the chosen checkpoint, on the pod, right after training (after lib.sh):
#   eval.sh RUN_DIR LLAMAFACTORY_CLI STEP EXAMPLES
# LLaMA-Factory's own evaluation (do_train false, do_eval true) of output/checkpoint-STEP on the
# first EXAMPLES held-out examples (train.yaml's eval_dataset, data/eval.jsonl): unpacked, one
# example a batch, and otherwise the run's own train.yaml (template, cutoff_len, quantisation), so
# eval_loss is the loss training minimised, over response tokens, averaged over the examples.
# One process on one GPU (no torchrun, no DeepSpeed): a 4-bit model fits where it trained.
# Its results stay in reference_eval/checkpoint-STEP/, so a second call only reads them.
# Prints `@@results PATH`, or `@@failed RC` and the end of reference_eval.log.
enter_run "$1"
cli=$2 step=$3 examples=$4
out=reference_eval/checkpoint-$step
if [ ! -f "$out/all_results.json" ]; then
  case $cli in */*) PATH="$(cd "$(dirname "$cli")" && pwd -P):$PATH" && export PATH ;; esac
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES%%,*}
  export CUDA_VISIBLE_DEVICES
  unset FORCE_TORCHRUN NPROC_PER_NODE
  "$cli" train train.yaml do_train=false do_eval=true "adapter_name_or_path=output/checkpoint-$step" \
    "output_dir=$out" packing=false per_device_eval_batch_size=1 "max_samples=$examples" \
    dataset=null deepspeed=null load_best_model_at_end=false plot_loss=false \
    overwrite_output_dir=true report_to=none >reference_eval.log 2>&1 </dev/null
  rc=$?
  if [ $rc != 0 ] || [ ! -f "$out/all_results.json" ]; then
    echo "@@failed $rc"
    tail -n 20 reference_eval.log
    exit 0
  fi
fi
echo "@@results $out/all_results.json"
