"""`python scripts/hub.py ...`: the command line of lora_style.hub (`python -m lora_style.hub`)."""

import sys

from lora_style.hub import main

if __name__ == "__main__":
    sys.exit(main())
