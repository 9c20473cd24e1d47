"""`python scripts/generate.py ...`: the command line of lora_style.mlx.generate (`python -m lora_style.mlx.generate`)."""

import sys

from lora_style.mlx.generate import main

if __name__ == "__main__":
    sys.exit(main())
