# The guide's steps 7 and 8 on the laptop: the PEFT adapter becomes an mlx-lm adapter for the
# shared 4-bit base model (models.smk), with its metadata.json and a few samples rendered in
# the training format, so the style shows before anything is copied anywhere.


TEMPLATES = Path(workflow.basedir) / "config" / "templates"


rule mlx_adapter:
    input:
        peft="lora_adapters/{run}_peft",
        # Only its config.json is read: the base's block count for num_layers, and the check.
        base=lambda w: base_4bit_dir(w.run),
    output:
        adapters="lora_adapters/{run}_mlx/adapters.safetensors",
        config="lora_adapters/{run}_mlx/adapter_config.json",
    log:
        "logs/{run}/mlx_adapter.log",
    benchmark:
        "benchmarks/{run}/mlx_adapter.tsv"
    conda:
        LOCAL_ENV
    params:
        outdir=lambda w, output: os.path.dirname(output.adapters),
        # A change to the converter's code reconverts (and never retrains); a comment does not.
        converter=code_version(
            "mlx/convert.py", "mlx/conversion_plan.py", "safetensors_io.py"
        ),
    shell:
        "logged {log:q} python -m lora_style.mlx.convert --input {input.peft:q} --output {params.outdir:q}"
        " --base {input.base:q}"


# mlx-lm's own tools (mlx_lm.generate, mlx_lm.server) render a chat with the base tokenizer's chat
# template: the bundle ships one that renders the training format, and the check records whether
# the base's own template already does (lora_style/mlx/chat_template.py).
rule bundle_chat_template:
    input:
        base=lambda w: base_4bit_dir(w.run),
        template=lambda w: TEMPLATES / f"{TRAIN_ARGS[w.run]['template']}.json",
    output:
        template="lora_adapters/{run}_mlx/chat_template.jinja",
        check="results/{run}/chat_template.json",
    log:
        "logs/{run}/bundle_chat_template.log",
    conda:
        LOCAL_ENV
    params:
        template=lambda w: TRAIN_ARGS[w.run]["template"],
    shell:
        "logged {log:q} python -m lora_style.mlx.chat_template --base {input.base:q} --template {params.template:q}"
        " --output {output.template:q} --check {output.check:q}"


# How much of what the adapter learnt the bundle keeps (lora_style/mlx/fidelity.py): the held-out
# loss with mlx-lm for the bundle, the 4-bit base alone and, for a small local base, the
# unquantised base + adapter (which must equal the pod's reference_eval.json).
rule fidelity_losses:
    input:
        examples="results/{run}/data/eval.jsonl",
        base=lambda w: base_4bit_dir(w.run),
        adapters=rules.mlx_adapter.output.adapters,
        adapter_config=rules.mlx_adapter.output.config,
        template=lambda w: TEMPLATES / f"{TRAIN_ARGS[w.run]['template']}.json",
        unquantised=lambda w: unquantised_base(w.run),
    output:
        "results/{run}/fidelity/losses.json",
    log:
        "logs/{run}/fidelity_losses.log",
    benchmark:
        "benchmarks/{run}/fidelity_losses.tsv"
    conda:
        LOCAL_ENV
    params:
        adapter_dir=lambda w, input: os.path.dirname(input.adapters),
        limit=lambda w: RUNS[w.run]["fidelity"]["examples"],
        cutoff_len=lambda w: TRAIN_ARGS[w.run]["cutoff_len"],
        template=lambda w: TRAIN_ARGS[w.run]["template"],
        unquantised=lambda w: " ".join(
            f"--unquantised {shlex.quote(path)}" for path in unquantised_base(w.run)
        ),
        code=code_version("mlx/fidelity.py", "prompt_format.py"),
    shell:
        "logged {log:q} python -m lora_style.mlx.fidelity losses --examples {input.examples:q}"
        " --limit {params.limit} --template {params.template:q} --cutoff-len {params.cutoff_len}"
        " --base-4bit {input.base:q} --adapter-path {params.adapter_dir:q} {params.unquantised}"
        " --output {output:q}"


rule metadata:
    input:
        peft="lora_adapters/{run}_peft",
        validation="results/{run}/data/validation.json",
        template=lambda w: TEMPLATES / f"{TRAIN_ARGS[w.run]['template']}.json",
        losses=rules.fidelity_losses.output,
        reference="results/{run}/train/reference_eval.json",
    output:
        "lora_adapters/{run}_mlx/metadata.json",
    log:
        "logs/{run}/metadata.log",
    conda:
        LOCAL_ENV
    params:
        author=lambda w: RUNS[w.run].get("author", ""),
        base_model=lambda w: base_4bit_dir(w.run),
        base_model_id=lambda w: RUNS[w.run]["base_model"],
        lora_rank=lambda w: TRAIN_ARGS[w.run]["lora_rank"],
        lora_alpha=lambda w: TRAIN_ARGS[w.run]["lora_alpha"],
        template=lambda w: TRAIN_ARGS[w.run]["template"],
        # A threshold edit rewrites the verdict here and recomputes no loss.
        threshold=lambda w: RUNS[w.run]["fidelity"]["threshold_percent"],
    shell:
        "logged {log:q} python -m lora_style.mlx.metadata --run {wildcards.run} --author={params.author:q}"
        " --base-model {params.base_model:q} --base-model-id {params.base_model_id:q}"
        " --lora-rank {params.lora_rank} --lora-alpha {params.lora_alpha}"
        " --template {params.template:q} --validation {input.validation:q}"
        " --peft {input.peft:q} --fidelity-losses {input.losses:q} --reference-eval {input.reference:q}"
        " --fidelity-threshold {params.threshold} --output {output:q}"


rule samples:
    input:
        base=lambda w: base_4bit_dir(w.run),
        adapters=rules.mlx_adapter.output.adapters,
        adapter_config=rules.mlx_adapter.output.config,
        # The held-out prompts; without them the validated training data (said so in samples.md).
        prompts=lambda w: RUNS[w.run].get("heldout")
        or f"results/{w.run}/data/train.jsonl",
        template=lambda w: TEMPLATES / f"{TRAIN_ARGS[w.run]['template']}.json",
    output:
        "results/{run}/samples.md",
    log:
        "logs/{run}/samples.log",
    benchmark:
        "benchmarks/{run}/samples.tsv"
    conda:
        LOCAL_ENV
    params:
        adapter_dir=lambda w, input: os.path.dirname(input.adapters),
        template=lambda w: TRAIN_ARGS[w.run]["template"],
        how_many=lambda w: RUNS[w.run]["samples"]["count"],
        max_tokens=lambda w: RUNS[w.run]["samples"]["max_tokens"],
        temperature=lambda w: RUNS[w.run]["samples"]["temperature"],
        top_p=lambda w: RUNS[w.run]["samples"]["top_p"],
        seed=lambda w: RUNS[w.run]["samples"]["seed"],
        note=lambda w: (
            "These prompts are held out of training."
            if RUNS[w.run].get("heldout")
            else "The run has no `heldout:` prompts, so these come from the TRAINING data: "
            "they show memorisation as much as style."
        ),
    shell:
        "logged {log:q} python -m lora_style.mlx.generate --model {input.base:q} --adapter-path {params.adapter_dir:q}"
        " --template {params.template:q} --prompts-file {input.prompts:q}"
        " --samples-md {output:q} --title 'Samples: {wildcards.run}' --note {params.note:q}"
        " --count {params.how_many} --max-tokens {params.max_tokens} --temp {params.temperature}"
        " --top-p {params.top_p} --seed {params.seed}"


# A single-folder model for apps that load one MLX model folder: the adapter fused into the 4-bit
# base (mlx_lm.fuse, which quantises the fused weights again), with the training format as its
# chat template. Built only for the quant table, which measures its loss.
rule fused_model:
    input:
        base=lambda w: base_4bit_dir(w.run),
        adapters=rules.mlx_adapter.output.adapters,
        adapter_config=rules.mlx_adapter.output.config,
        chat_template=rules.bundle_chat_template.output.template,
    output:
        directory("lora_adapters/{run}_fused_mlx"),
    log:
        "logs/{run}/fused_model.log",
    conda:
        LOCAL_ENV
    params:
        adapter_dir=lambda w, input: os.path.dirname(input.adapters),
    shell:
        "logged {log:q} python -m mlx_lm fuse --model {input.base:q} --adapter-path {params.adapter_dir:q}"
        " --save-path {output:q} && cp {input.chat_template:q} {output:q}/chat_template.jinja"


# `snakemake {run}_quant_table`: the bundle's adapter on each finer quantisation of the base,
# with its size on disk, held-out loss and tokens/s here (lora_style/mlx/quant_table.py).
rule quant_table:
    input:
        examples="results/{run}/data/eval.jsonl",
        base=lambda w: base_4bit_dir(w.run),
        candidates=lambda w: quant_candidate_dirs(w.run),
        adapters=rules.mlx_adapter.output.adapters,
        losses=rules.fidelity_losses.output,
        reference="results/{run}/train/reference_eval.json",
        fused=rules.fused_model.output,
    output:
        table="results/{run}/quant_table.md",
        numbers="results/{run}/quant_table.json",
    log:
        "logs/{run}/quant_table.log",
    conda:
        LOCAL_ENV
    params:
        adapter_dir=lambda w, input: os.path.dirname(input.adapters),
        limit=lambda w: RUNS[w.run]["fidelity"]["examples"],
        cutoff_len=lambda w: TRAIN_ARGS[w.run]["cutoff_len"],
        template=lambda w: TRAIN_ARGS[w.run]["template"],
        models=lambda w, input: " ".join(
            shlex.quote(f"--model={name}={path}")
            for name, path in [("4bit", input.base)]
            + [
                (spec["name"], path)
                for spec, path in zip(
                    RUNS[w.run]["fidelity"]["quant_candidates"], input.candidates
                )
            ]
        ),
    shell:
        "logged {log:q} python -m lora_style.mlx.quant_table --run {wildcards.run} --examples {input.examples:q}"
        " --limit {params.limit} --template {params.template:q} --cutoff-len {params.cutoff_len}"
        " --adapter-path {params.adapter_dir:q} --losses {input.losses:q} --reference {input.reference:q}"
        " {params.models} --fused fused={input.fused:q} --output {output.table:q}"
