"""`python scripts/bundle_help.py ...`: the command line of lora_style.report.bundle_help (`python -m lora_style.report.bundle_help`)."""

import sys

from lora_style.report.bundle_help import main

if __name__ == "__main__":
    sys.exit(main())
