"""`python scripts/dataset_info.py ...`: the command line of lora_style.data.dataset_info (`python -m lora_style.data.dataset_info`)."""

import sys

from lora_style.data.dataset_info import main

if __name__ == "__main__":
    sys.exit(main())
