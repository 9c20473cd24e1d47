# What `snakemake --report report.html` shows for each run (a category), one subcategory per stage:
# the records the graph already wrote, as a plot and readable pages. Nothing here touches the pod:
# the loss plot reads the trainer_state.json the fetch left (restyling it reruns only loss_plot).

RUN_REPORT = "{run}"  # the category: one per run


rule loss_plot:
    input:
        state="results/{run}/train/trainer_state.json",
        summary="results/{run}/train/training_summary.json",
    output:
        report(
            "results/{run}/train/loss.svg",
            category=RUN_REPORT,
            subcategory="3. Training",
            caption="../report/loss.rst",
            labels={"item": "loss curves"},
        ),
    log:
        "logs/{run}/loss_plot.log",
    conda:
        LOCAL_ENV
    shell:
        "logged {log:q} python -m lora_style.report.loss_plot {input.state:q} --summary {input.summary:q} --output {output:q}"


rule report_pages:
    input:
        validation="results/{run}/data/validation.json",
        # Its preflight: the checks that preceded this training (not preflight.json, which only
        # `snakemake -f` builds, and which as an input would make a report touch the pod).
        launch="results/{run}/train/launch.json",
        finished="results/{run}/train/finished.json",
        summary="results/{run}/train/training_summary.json",
        metadata="lora_adapters/{run}_mlx/metadata.json",
        samples="results/{run}/samples.md",
    output:
        validation=report(
            "results/{run}/report/validation.html",
            category=RUN_REPORT,
            subcategory="1. Data",
            caption="../report/validation.rst",
            labels={"item": "validation statistics"},
        ),
        preflight=report(
            "results/{run}/report/preflight.html",
            category=RUN_REPORT,
            subcategory="2. Preflight",
            caption="../report/preflight.rst",
            labels={"item": "preflight checks"},
        ),
        training=report(
            "results/{run}/report/training.html",
            category=RUN_REPORT,
            subcategory="3. Training",
            caption="../report/training.rst",
            labels={"item": "training summary"},
        ),
        metadata=report(
            "results/{run}/report/metadata.html",
            category=RUN_REPORT,
            subcategory="4. MLX bundle",
            caption="../report/metadata.rst",
            labels={"item": "metadata.json"},
        ),
        samples=report(
            "results/{run}/report/samples.html",
            category=RUN_REPORT,
            subcategory="5. Samples",
            caption="../report/samples.rst",
            labels={"item": "samples"},
        ),
    log:
        "logs/{run}/report_pages.log",
    conda:
        LOCAL_ENV
    params:
        # The results table's overfitting note: editing it rewrites these pages only.
        overfitting_share=lambda w: RUNS[w.run]["results_table"]["overfitting_share"],
    shell:
        "logged {log:q} python -m lora_style.report.pages --run {wildcards.run} --validation {input.validation:q}"
        " --launch {input.launch:q} --finished {input.finished:q} --summary {input.summary:q}"
        " --metadata {input.metadata:q} --samples {input.samples:q}"
        " --validation-page {output.validation:q} --preflight-page {output.preflight:q}"
        " --training-page {output.training:q} --metadata-page {output.metadata:q}"
        " --samples-page {output.samples:q} --overfitting-share {params.overfitting_share}"
