"""`python scripts/llamafactory_facts.py ...`: the command line of lora_style.config.llamafactory_facts (`python -m lora_style.config.llamafactory_facts`)."""

import sys

from lora_style.config.llamafactory_facts import main

if __name__ == "__main__":
    sys.exit(main())
