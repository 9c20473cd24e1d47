# The guide's eight manual steps as one build graph. `snakemake -n lovecraft_mlx` shows the plan.
#
#   data/training/{run}/train_sft.jsonl  -> results/{run}/data/train.jsonl         (validate_dataset)
#                                        -> results/{run}/llamafactory/dataset_info.json, train.yaml
#   remote training on the run's pod     -> lora_adapters/{run}_peft/              (train.smk)
#   lora_adapters/{run}_peft/            -> lora_adapters/{run}_mlx/               (mlx.smk)
#   base_model                           -> models/{base}-4bit-mlx/                (models.smk)
#   the run's records                    -> results/{run}/report/, train/loss.svg  (report.smk)
#
# `snakemake --report report.html` then gathers them into one page: a category per run.

import os

from snakemake.utils import min_version

min_version("9.0")


# Always the repository's config; `--configfile FILE` merges FILE over it (config/demo.yaml).
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/train.smk"
include: "rules/mlx.smk"
include: "rules/report.smk"


# A real run stops here, before its first job, when it would need a pod still at POD_IP.
onstart:
    refuse_placeholder_pods()


# The end of a run: a bundle that keeps too little of what its adapter learnt says so, with the
# fixes (lora_style/mlx/fidelity.py; the same sentence is in metadata.json and the report).
onsuccess:
    for _line in bundle_help.fidelity_warnings(Path.cwd(), RUNS):
        print(_line, file=sys.stderr)


# The report's front page; each run's items carry their own captions (report/*.rst).
report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        [mlx_bundle(run) for run in RUNS],


# One target per run, in the user's words: `snakemake lovecraft_mlx`.
for _run in RUNS:

    rule:
        name:
            f"{_run}_mlx"
        input:
            mlx_bundle(_run),
        resources:
            plan=lambda w, run=_run: PlanNote(run),
        message:
            "{resources.plan}"

    # The bundle's adapter on finer quantisations of the base, measured: `snakemake {run}_quant_table`.
    rule:
        name:
            f"{_run}_quant_table"
        input:
            f"results/{_run}/quant_table.md",
