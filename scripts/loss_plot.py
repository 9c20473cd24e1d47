"""`python scripts/loss_plot.py ...`: the command line of lora_style.report.loss_plot (`python -m lora_style.report.loss_plot`)."""

import sys

from lora_style.report.loss_plot import main

if __name__ == "__main__":
    sys.exit(main())
