# The guide's steps 2-4 on the laptop: validate the data, then generate dataset_info.json and the
# training YAML from the config, so nothing bad or inconsistent ever reaches the pod.


rule validate_dataset:
    input:
        data=lambda w: RUNS[w.run]["data"],
        base=lambda w: base_model_input(w.run),
    output:
        # The training side and the held-out side of the split (val_size, by a hash of each
        # example: an edit never moves another example across).
        data="results/{run}/data/train.jsonl",
        eval="results/{run}/data/eval.jsonl",
        report="results/{run}/data/validation.json",
    log:
        "logs/{run}/validate_dataset.log",
    benchmark:
        "benchmarks/{run}/validate_dataset.tsv"
    conda:
        LOCAL_ENV
    params:
        cutoff_len=lambda w: TRAIN_ARGS[w.run]["cutoff_len"],
        val_size=lambda w: TRAIN_ARGS[w.run].get("val_size") or 0,
        # Token counts render each example in the run's chat template, as training does.
        template=lambda w: TRAIN_ARGS[w.run]["template"],
        # The base model's tokenizer: its directory, or for a hub id the tokenizer files alone
        # (cached; without the hub the report says why and keeps to character counts).
        tokenizer=lambda w, input: input.base or RUNS[w.run]["base_model"],
    shell:
        "logged {log:q} python -m lora_style.data.validate {input.data:q} --output {output.data:q}"
        " --eval-output {output.eval:q} --val-size {params.val_size}"
        " --report {output.report:q} --cutoff-len {params.cutoff_len}"
        " --template {params.template:q} --tokenizer {params.tokenizer:q}"


rule dataset_info:
    output:
        "results/{run}/llamafactory/dataset_info.json",
    log:
        "logs/{run}/dataset_info.log",
    conda:
        LOCAL_ENV
    params:
        # Its output is the code's alone (from the run's name): a change to what the code writes
        # (the held-out eval entry, say) rewrites it in a project that has one; a comment does not.
        code=code_version("data/dataset_info.py"),
    shell:
        "logged {log:q} python -m lora_style.data.dataset_info --run {wildcards.run} --output {output:q}"


rule train_yaml:
    output:
        "results/{run}/llamafactory/train.yaml",
    log:
        "logs/{run}/train_yaml.log",
    conda:
        LOCAL_ENV
    params:
        args=lambda w: json.dumps(TRAIN_ARGS[w.run]),
    shell:
        "logged {log:q} python -m lora_style.config.train_yaml --args {params.args:q} --output {output:q}"
