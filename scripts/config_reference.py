"""`python scripts/config_reference.py`: the command line of lora_style.config.reference.

It writes docs/config-reference.md from config/schema/config.schema.yaml
(`python -m lora_style.config.reference` does the same).
"""

import sys

from lora_style.config.reference import main, render  # noqa: F401 (render: the page from a schema dict)

if __name__ == "__main__":
    sys.exit(main())
