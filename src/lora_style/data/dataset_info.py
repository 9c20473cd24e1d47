"""Write LLaMA-Factory's dataset_info.json for one run (the guide's step 3, generated).

    python scripts/dataset_info.py --run lovecraft --output dataset_info.json

The dataset's name comes from the same function the training YAML uses, so the two can
never disagree (the guide's "Dataset not found" row).
"""

from __future__ import annotations

import argparse
import sys

from lora_style.config.train_yaml import dataset_name, eval_dataset_name
from lora_style.fileio import write_json

# The validated data's file name inside the run's dataset_dir on the pod.
DATA_FILE = "train.jsonl"
# The held-out side of the graph's split (validate.py), the training YAML's eval_dataset.
EVAL_FILE = "eval.jsonl"
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def dataset_info(run: str) -> dict:
    return {
        name: {"file_name": file_name, "formatting": "alpaca", "columns": dict(COLUMNS)}
        for name, file_name in ((dataset_name(run), DATA_FILE), (eval_dataset_name(run), EVAL_FILE))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run's name from config/config.yaml")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    write_json(args.output, dataset_info(args.run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
