"""`python scripts/quantize_base.py ...`: the command line of lora_style.mlx.quantize_base (`python -m lora_style.mlx.quantize_base`)."""

import sys

from lora_style.mlx.quantize_base import main

if __name__ == "__main__":
    sys.exit(main())
