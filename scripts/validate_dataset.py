"""`python scripts/validate_dataset.py ...`: the command line of lora_style.data.validate (`python -m lora_style.data.validate`)."""

import sys

from lora_style.data.validate import main

if __name__ == "__main__":
    sys.exit(main())
