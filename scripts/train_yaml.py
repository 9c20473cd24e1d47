"""`python scripts/train_yaml.py ...`: the command line of lora_style.config.train_yaml (`python -m lora_style.config.train_yaml`)."""

import sys

from lora_style.config.train_yaml import main

if __name__ == "__main__":
    sys.exit(main())
