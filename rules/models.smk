# Base models. The demo and the tests stand in a tiny random Qwen2, built here from local text.


rule tiny_base_model:
    input:
        corpus=Path(workflow.basedir) / "data/training/lovecraft/train_sft.jsonl",
    output:
        directory("models/tiny-qwen2"),
    conda:
        LOCAL_ENV
    log:
        "logs/models/tiny-qwen2.log",
    shell:
        "python -m make_tiny_model --corpus {input.corpus:q} --output {output:q}"
        " > {log:q} 2>&1"
