"""Write a LLaMA-Factory chat template as plain JSON (run where llamafactory is installed).

    .venv-pod/bin/python scripts/dump_template.py qwen --output config/templates/qwen.json

The local side renders prompts from this file (scripts/prompt_format.py), so inference
matches training without importing LLaMA-Factory on the Mac.
"""

from __future__ import annotations

import argparse
import json
import sys


def template_spec(name: str) -> dict:
    from llamafactory.data.template import TEMPLATES
    import llamafactory

    if name not in TEMPLATES:
        raise SystemExit(f"error: LLaMA-Factory has no template '{name}'; "
                         f"known: {', '.join(sorted(TEMPLATES))}")
    template = TEMPLATES[name]
    spec = {"name": name, "llamafactory_version": llamafactory.__version__}
    for part in ("format_prefix", "format_system", "format_user", "format_assistant"):
        slots = getattr(template, part).slots
        if not all(isinstance(slot, str) for slot in slots):
            raise SystemExit(f"error: template '{name}' uses special-token slots in {part} "
                             f"({slots!r}); only plain-text templates are supported")
        spec[part] = list(slots)
    spec["default_system"] = template.default_system
    spec["stop_words"] = list(template.stop_words)
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="template name, as in the training YAML's `template:`")
    parser.add_argument("--output", help="JSON file to write (default: standard output)")
    args = parser.parse_args(argv)
    text = json.dumps(template_spec(args.name), indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
