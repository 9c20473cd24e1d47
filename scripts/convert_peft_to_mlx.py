"""`python scripts/convert_peft_to_mlx.py ...`: the command line of lora_style.mlx.convert (`python -m lora_style.mlx.convert`)."""

import sys

from lora_style.mlx.convert import main

if __name__ == "__main__":
    sys.exit(main())
