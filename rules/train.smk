# The guide's steps 1, 2, 5 and 6 on the run's pod: submit -> wait -> fetch (lora_style/training/remote_train.py).
# The expensive node. What keeps it cheap to get right:
#  - preflight checks the pod against the profile before anything is uploaded or launched;
#  - the pod's folder for a run is keyed by a hash of its inputs, so a rerun re-attaches to the
#    training there (live or finished) instead of launching it twice, and changed data never
#    touches an older run's checkpoints;
#  - training runs detached (tmux / setsid nohup); wait survives dropped connections and resumes a
#    run whose process died from its last checkpoint.
# Where a run trains (its pod's settings) is a resource of these jobs, as a cluster partition would
# be, not a param: a new IP, port or key for the same run changes no result, so it reruns nothing.
# (Not a pod.json file read as ancient(): snakemake#4166 then skips a job that needs to run.)
# Never inputs: the scripts themselves, so an edit to them does not retrain.

# With --config relaunch=RUN, `relaunch` tells wait_training it may train RUN again from step 0
# when its folder is gone from the pod; a resource too, so asking reruns nothing by itself.
POD_SETTINGS = lambda w: json.dumps(
    {
        "name": RUNS[w.run]["pod"],
        **pod_config(w.run),
        **({"relaunch": True} if w.run in RELAUNCH else {}),
    }
)


# Checks the pod for a run without launching anything: `snakemake -f results/<run>/train/preflight.json`.
rule preflight:
    input:
        data="results/{run}/data/train.jsonl",
        eval_data="results/{run}/data/eval.jsonl",
        dataset_info="results/{run}/llamafactory/dataset_info.json",
        train_yaml="results/{run}/llamafactory/train.yaml",
    output:
        "results/{run}/train/preflight.json",
    log:
        "logs/{run}/preflight.log",
    conda:
        LOCAL_ENV
    resources:
        pod=POD_SETTINGS,
    shell:
        "logged {log:q} python -m lora_style.training.remote_train preflight --run {wildcards.run} --pod-settings {resources.pod:q}"
        " --train-yaml {input.train_yaml:q} --data {input.data:q} --dataset-info {input.dataset_info:q}"
        " --eval-data {input.eval_data:q}"
        " --output {output:q}"


rule submit_training:
    input:
        data="results/{run}/data/train.jsonl",
        eval_data="results/{run}/data/eval.jsonl",
        dataset_info="results/{run}/llamafactory/dataset_info.json",
        train_yaml="results/{run}/llamafactory/train.yaml",
        base=lambda w: base_model_input(w.run),
        deepspeed=lambda w: deepspeed_input(w.run),
    output:
        "results/{run}/train/launch.json",
    log:
        "logs/{run}/submit_training.log",
    benchmark:
        "benchmarks/{run}/submit_training.tsv"
    conda:
        LOCAL_ENV
    resources:
        pod=POD_SETTINGS,
        cost=lambda w: training_estimate(w.run).line(),
        estimate=lambda w: json.dumps(training_estimate(w.run).as_dict()),
    message:
        "{resources.cost}"
    shell:
        "logged {log:q} python -m lora_style.training.remote_train submit --run {wildcards.run} --pod-settings {resources.pod:q}"
        " --train-yaml {input.train_yaml:q} --data {input.data:q} --dataset-info {input.dataset_info:q}"
        " --eval-data {input.eval_data:q}"
        " --output {output:q} --estimate {resources.estimate:q}"


rule wait_training:
    input:
        launch="results/{run}/train/launch.json",
        data="results/{run}/data/train.jsonl",
        eval_data="results/{run}/data/eval.jsonl",
        dataset_info="results/{run}/llamafactory/dataset_info.json",
        train_yaml="results/{run}/llamafactory/train.yaml",
    output:
        "results/{run}/train/finished.json",
    log:
        # The pod's train.log, mirrored by the script; this job's own output goes to `wait`.
        remote="logs/{run}/train_remote.log",
        wait="logs/{run}/wait_training.log",
    conda:
        LOCAL_ENV
    resources:
        pod=POD_SETTINGS,
    shell:
        "logged {log.wait:q} python -m lora_style.training.remote_train wait --run {wildcards.run} --pod-settings {resources.pod:q}"
        " --launch {input.launch:q} --train-yaml {input.train_yaml:q} --data {input.data:q} --dataset-info {input.dataset_info:q}"
        " --eval-data {input.eval_data:q}"
        " --output {output:q} --remote-log {log.remote:q}"


rule best_checkpoint:
    input:
        launch="results/{run}/train/launch.json",
        finished="results/{run}/train/finished.json",
    output:
        adapter=directory("lora_adapters/{run}_peft"),
        summary="results/{run}/train/training_summary.json",
        # The whole log_history, for the loss plot (rules/report.smk), which never touches the pod.
        state="results/{run}/train/trainer_state.json",
        # The chosen checkpoint's own evaluation on the held-out examples, on the pod while it is
        # there (training/eval.sh): what the Mac bundle is measured against (mlx.smk, fidelity).
        reference="results/{run}/train/reference_eval.json",
    log:
        "logs/{run}/best_checkpoint.log",
    benchmark:
        "benchmarks/{run}/best_checkpoint.tsv"
    conda:
        LOCAL_ENV
    resources:
        pod=POD_SETTINGS,
    params:
        reference_examples=lambda w: (
            RUNS[w.run]["fidelity"]["examples"]
            if RUNS[w.run]["fidelity"]["reference"]
            else 0
        ),
    shell:
        "logged {log:q} python -m lora_style.training.remote_train fetch --run {wildcards.run} --pod-settings {resources.pod:q}"
        " --launch {input.launch:q} --finished {input.finished:q} --adapter-dir {output.adapter:q}"
        " --summary {output.summary:q} --trainer-state {output.state:q}"
        " --reference-eval {output.reference:q} --reference-examples {params.reference_examples}"
