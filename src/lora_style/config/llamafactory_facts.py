"""Facts the local side needs from LLaMA-Factory, written as plain files (run where it is installed).

    .venv-pod/bin/python scripts/llamafactory_facts.py keys --output config/llamafactory_keys.txt
    .venv-pod/bin/python scripts/llamafactory_facts.py template qwen --output config/templates/qwen.json

- `keys`: every key LLaMA-Factory's training parser accepts. The local side checks profiles and
  overrides against it, so a typo in a 7-hour configuration fails on the laptop in seconds
  instead of on the pod.
- `template NAME`: a chat template as JSON. The local side renders prompts from it
  (scripts/prompt_format.py), so inference matches training without LLaMA-Factory on the Mac.

Tests regenerate both from the installed LLaMA-Factory and compare, so neither goes stale unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def known_keys() -> str:
    import llamafactory
    from llamafactory.hparams.parser import _TRAIN_ARGS

    keys = sorted({f.name for cls in _TRAIN_ARGS for f in dataclasses.fields(cls) if f.init})
    header = f"# llamafactory {llamafactory.__version__}: keys of get_train_args\n"
    return header + "".join(key + "\n" for key in keys)


def template_spec(name: str) -> dict:
    import llamafactory
    from llamafactory.data.template import TEMPLATES

    if name not in TEMPLATES:
        raise SystemExit(
            f"error: LLaMA-Factory has no template '{name}'; known: {', '.join(sorted(TEMPLATES))}"
        )
    template = TEMPLATES[name]
    spec = {"name": name, "llamafactory_version": llamafactory.__version__}
    for part in ("format_prefix", "format_system", "format_user", "format_assistant"):
        slots = getattr(template, part).slots
        if not all(isinstance(slot, str) for slot in slots):
            raise SystemExit(
                f"error: template '{name}' uses special-token slots in {part} "
                f"({slots!r}); only plain-text templates are supported"
            )
        spec[part] = list(slots)
    spec["default_system"] = template.default_system
    spec["stop_words"] = list(template.stop_words)
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="fact", required=True)
    keys = sub.add_parser("keys", help="the training parser's keys, one a line")
    keys.add_argument("--output", help="file to write (default: standard output)")
    template = sub.add_parser("template", help="a chat template as JSON")
    template.add_argument("name", help="template name, as in the training YAML's `template:`")
    template.add_argument("--output", help="file to write (default: standard output)")
    args = parser.parse_args(argv)

    if args.fact == "keys":
        text = known_keys()
    else:
        text = json.dumps(template_spec(args.name), indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
