"""`python scripts/remote_train.py ...`: the command line of lora_style.training.remote_train (`python -m lora_style.training.remote_train`)."""

import sys

from lora_style.training.remote_train import main

if __name__ == "__main__":
    sys.exit(main())
