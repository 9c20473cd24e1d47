"""List every key LLaMA-Factory's training parser accepts (run where llamafactory is installed).

    .venv-pod/bin/python scripts/list_llamafactory_keys.py --output config/llamafactory_keys.txt

The local side checks profiles and overrides against this list, so a typo in a 7-hour
configuration fails on the laptop in seconds instead of on the pod. A test regenerates
the list from the installed LLaMA-Factory and compares, so it cannot go stale unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def known_keys() -> list[str]:
    from llamafactory.hparams.parser import _TRAIN_ARGS

    return sorted({f.name for cls in _TRAIN_ARGS for f in dataclasses.fields(cls) if f.init})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="text file to write, one key a line (default: stdout)")
    args = parser.parse_args(argv)
    import llamafactory

    text = f"# llamafactory {llamafactory.__version__}: keys of get_train_args\n"
    text += "".join(key + "\n" for key in known_keys())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
