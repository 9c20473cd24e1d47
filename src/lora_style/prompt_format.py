"""The chat format training saw, rendered without LLaMA-Factory installed.

LLaMA-Factory's alpaca converter puts ``instruction + "\\n" + input`` (either part
left out when empty) in the *user* turn, and its template adds its default system
prompt. The guide's "Prompt Format" section (instruction as the system turn) is not
what training sees. The template itself is not copied by hand: ``config/templates/
<name>.json`` is written by ``scripts/llamafactory_facts.py template`` from LLaMA-Factory's own
registry, a test checks it against LLaMA-Factory's rendering, and a run records the
template of the pod that trained it.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_style.paths import CONFIG

TEMPLATES_DIR = CONFIG / "templates"


def load_template(name: str = "qwen", path: str | Path | None = None) -> dict:
    path = Path(path) if path else TEMPLATES_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no prompt template '{name}'; write it with "
            f"scripts/llamafactory_facts.py template {name} in the LLaMA-Factory environment"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def user_content(instruction: str, input: str = "") -> str:
    """The alpaca converter's user turn: instruction and input joined by a newline."""
    return "\n".join(part for part in (instruction, input) if part)


def _fill(slots: list[str], content: str) -> str:
    return "".join(slot.replace("{{content}}", content) for slot in slots)


def render_prompt(
    instruction: str, input: str = "", template: dict | None = None, system: str | None = None
) -> str:
    """Everything before the response, ending where the model starts writing."""
    template = template or load_template()
    system = system if system is not None else template["default_system"]
    text = _fill(template["format_prefix"], "")
    if system:
        text += _fill(template["format_system"], system)
    return text + _fill(template["format_user"], user_content(instruction, input))


def render_training_text(instruction: str, input: str, output: str, template: dict | None = None) -> str:
    """Prompt plus response, as one training example is tokenised."""
    template = template or load_template()
    return render_prompt(instruction, input, template) + _fill(template["format_assistant"], output)


def split_guide_prompt(prompt: str) -> tuple[str, str]:
    """The guide's single-string form 'instruction ### input'."""
    instruction, sep, input = prompt.partition("###")
    return instruction.strip(), input.strip() if sep else ""
