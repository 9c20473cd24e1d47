"""Where the project's own files are: the checkout this package is installed from (editable).

config/ (the schema, the hyper-parameter profiles, the rates, the chat templates) is the
project's, not the package's: one place says where it is.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
SCHEMA = CONFIG / "schema" / "config.schema.yaml"
