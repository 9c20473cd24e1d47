# Base models. The demo and the tests stand in a tiny Qwen2, built here from local text (for
# the demo, briefly pretrained on it).

import re


rule tiny_base_model:
    input:
        corpus=Path(workflow.basedir) / "data/training/lovecraft/train_sft.jsonl",
    output:
        directory("models/tiny-qwen2"),
    log:
        "logs/models/tiny-qwen2.log",
    conda:
        LOCAL_ENV
    # torch's pretraining uses every core it is given (Snakemake sets OMP_NUM_THREADS to this,
    # scaled down to --cores); without it a job gets one.
    threads: 4
    params:
        # A short causal-LM pretraining on the corpus, so the demo's samples are its words.
        pretrain_steps=300,
        code=code_version("tiny_model.py"),
    shell:
        "logged {log:q} python -m lora_style.tiny_model --corpus {input.corpus:q} --output {output:q}"
        " --pretrain-steps {params.pretrain_steps}"


# The 4-bit MLX base model (the guide's step 8), built once per base model and shared by every
# run on it. A hub id is downloaded on this machine into the Hugging Face cache, its progress
# shown as it goes; a local directory (maybe built by a rule, as the demo's tiny model) is an
# input, so a rebuilt base is requantised.
rule base_4bit:
    input:
        base=lambda w: local_model_input(BASE_MODELS[w.base]),
    output:
        directory("models/{base}-4bit-mlx"),
    log:
        "logs/models/{base}-4bit-mlx.log",
    benchmark:
        "benchmarks/models/{base}-4bit-mlx.tsv"
    wildcard_constraints:
        # Only the runs' base models; anything else has no rule.
        base="|".join(re.escape(name) for name in BASE_MODELS),
    conda:
        LOCAL_ENV
    # Reading, quantising and writing the shards keeps several cores busy on a large base.
    threads: 4
    params:
        source=lambda w, input: input.base if input.base else BASE_MODELS[w.base],
        q_bits=4,
        q_group_size=64,
    shell:
        "logged {log:q} python -m lora_style.mlx.quantize_base --hf-path {params.source:q} --mlx-path {output:q}"
        " --q-bits {params.q_bits} --q-group-size {params.q_group_size}"


# The finer MLX quantisations a run's fidelity.quant_candidates names (g32, 6bit, 8bit,
# mixed_4_6): built only for `snakemake {run}_quant_table`, measured there (rules/mlx.smk).
rule quant_candidate:
    input:
        base=lambda w: local_model_input(BASE_MODELS[w.base]),
    output:
        directory("models/{base}-{candidate}-mlx"),
    log:
        "logs/models/{base}-{candidate}-mlx.log",
    benchmark:
        "benchmarks/models/{base}-{candidate}-mlx.tsv"
    wildcard_constraints:
        base="|".join(re.escape(name) for name in QUANT_CANDIDATES),
        candidate="|".join(
            sorted(
                {re.escape(n) for specs in QUANT_CANDIDATES.values() for n in specs}
            )
        )
        or "^$",
    conda:
        LOCAL_ENV
    params:
        source=lambda w, input: input.base if input.base else BASE_MODELS[w.base],
        q_bits=lambda w: QUANT_CANDIDATES[w.base][w.candidate]["bits"],
        q_group_size=lambda w: QUANT_CANDIDATES[w.base][w.candidate]["group_size"],
        predicate=lambda w: (
            f"--quant-predicate {QUANT_CANDIDATES[w.base][w.candidate]['quant_predicate']}"
            if QUANT_CANDIDATES[w.base][w.candidate].get("quant_predicate")
            else ""
        ),
    shell:
        "logged {log:q} python -m lora_style.mlx.quantize_base --hf-path {params.source:q} --mlx-path {output:q}"
        " --q-bits {params.q_bits} --q-group-size {params.q_group_size} {params.predicate}"
