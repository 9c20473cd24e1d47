# The guide's steps 2-4 on the laptop: validate the data, then generate dataset_info.json and the
# training YAML from the config, so nothing bad or inconsistent ever reaches the pod.


rule validate_dataset:
    input:
        data=lambda w: RUNS[w.run]["data"],
        base=lambda w: base_model_input(w.run),
    output:
        data="results/{run}/data/train.jsonl",
        report="results/{run}/data/validation.json",
    params:
        cutoff_len=lambda w: TRAIN_ARGS[w.run].get("cutoff_len", 2048),
        tokenizer=lambda w, input: f"--tokenizer {input.base}" if input.base else "",
    conda:
        LOCAL_ENV
    log:
        "logs/{run}/validate_dataset.log",
    shell:
        "python -m validate_dataset {input.data:q} --output {output.data:q}"
        " --report {output.report:q} --cutoff-len {params.cutoff_len} {params.tokenizer}"
        " > {log:q} 2>&1 || {{ cat {log:q} >&2; exit 1; }}"


rule dataset_info:
    output:
        "results/{run}/llamafactory/dataset_info.json",
    conda:
        LOCAL_ENV
    log:
        "logs/{run}/dataset_info.log",
    shell:
        "python -m dataset_info --run {wildcards.run} --output {output:q} > {log:q} 2>&1"


rule train_yaml:
    output:
        "results/{run}/llamafactory/train.yaml",
    params:
        args=lambda w: json.dumps(TRAIN_ARGS[w.run]),
    conda:
        LOCAL_ENV
    log:
        "logs/{run}/train_yaml.log",
    shell:
        "python -m train_yaml --args {params.args:q} --output {output:q} > {log:q} 2>&1"
