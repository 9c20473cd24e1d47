"""`python scripts/best_checkpoint.py ...`: the command line of lora_style.training.best_checkpoint (`python -m lora_style.training.best_checkpoint`)."""

import sys

from lora_style.training.best_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
