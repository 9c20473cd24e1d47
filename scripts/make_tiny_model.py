"""`python scripts/make_tiny_model.py ...`: the command line of lora_style.tiny_model (`python -m lora_style.tiny_model`)."""

import sys

from lora_style.tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
