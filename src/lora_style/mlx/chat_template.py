"""The chat template that makes mlx-lm's own tools render the prompt training saw.

    python -m lora_style.mlx.chat_template --base models/B-4bit-mlx --template qwen \
        --output lora_adapters/R_mlx/chat_template.jinja --check results/R/chat_template.json

``mlx_lm.generate`` and ``mlx_lm.server`` render a chat through the base tokenizer's chat
template. Training rendered it with LLaMA-Factory's template (config/templates/NAME.json:
prompt_format.py). This writes that template as a Jinja chat template for the bundle
(``mlx_lm.server --chat-template "$(cat chat_template.jinja)"``), and checks whether the base
tokenizer's own template already renders the same token ids (Qwen2.5's does; a base without a
chat template, like the demo's tiny model, does not): the check's record says which, and the
commands in docs/mac-bundle.md follow from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_style.fileio import write_atomic
from lora_style.prompt_format import load_template, render_prompt, user_content

# What the check renders: an instruction with an input, as training saw it.
PROBE = {"instruction": "Rewrite the following passage.", "input": "The bus broke down on a country road."}


def _slots(slots: list[str], variable: str) -> str:
    out = []
    for slot in slots:
        parts = slot.split("{{content}}")
        for i, part in enumerate(parts):
            if part:
                out.append("{% raw %}" + part + "{% endraw %}")
            if i < len(parts) - 1:
                out.append("{{ " + variable + " }}")
    return "".join(out)


def jinja_template(template: dict) -> str:
    """The template as a Jinja chat template: the default system prompt unless the chat starts
    with one, each user turn in format_user (which, in LLaMA-Factory's templates, ends with the
    assistant's header: the generation prompt), each assistant turn in format_assistant."""
    default = json.dumps(template.get("default_system") or "")
    return (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set turns = messages[1:] %}{% else %}{% set system = " + default + " %}"
        "{% set turns = messages %}{% endif %}"
        + _slots(template["format_prefix"], "''")
        + "{% if system %}"
        + _slots(template["format_system"], "system")
        + "{% endif %}{% for message in turns %}{% if message['role'] == 'user' %}"
        + _slots(template["format_user"], "message['content']")
        + "{% elif message['role'] == 'assistant' %}"
        + _slots(template["format_assistant"], "message['content']")
        + "{% endif %}{% endfor %}"
    )


def chat_ids(tokenizer, messages: list[dict], chat_template: str | None = None) -> list[int] | None:
    """Token ids of a chat as the tokenizer's chat template (or `chat_template`) renders it, as
    mlx_lm.server does; None when the tokenizer has no template and none is given."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        return None
    kwargs = {"chat_template": chat_template} if chat_template else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return list(tokenizer.encode(text, add_special_tokens=False))


def training_ids(tokenizer, template: dict, example: dict = PROBE) -> list[int]:
    return list(
        tokenizer.encode(
            render_prompt(example["instruction"], example["input"], template), add_special_tokens=False
        )
    )


def check(tokenizer, template: dict) -> dict:
    """Whether the base's own chat template and the shipped one render training's token ids."""
    messages = [{"role": "user", "content": user_content(PROBE["instruction"], PROBE["input"])}]
    expected = training_ids(tokenizer, template)
    own = chat_ids(tokenizer, messages)
    shipped = chat_ids(tokenizer, messages, jinja_template(template))
    return {
        "template": template["name"],
        "base_template_matches": own == expected,
        "base_has_chat_template": own is not None,
        "shipped_template_matches": shipped == expected,
        "prompt_tokens": len(expected),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the bundle's MLX base (its tokenizer)")
    parser.add_argument("--template", default="qwen")
    parser.add_argument("--output", required=True, help="the bundle's chat_template.jinja")
    parser.add_argument("--check", required=True, help="where to record the check (JSON)")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    template = load_template(args.template)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    record = check(tokenizer, template)
    if not record["shipped_template_matches"]:
        print(
            f"error: the chat template written for {args.template} does not render training's "
            f"token ids with {args.base}'s tokenizer; report this (lora_style/mlx/chat_template.py)",
            file=sys.stderr,
        )
        return 1
    write_atomic(args.output, jinja_template(template).encode())
    write_atomic(args.check, (json.dumps(record, indent=2) + "\n").encode())
    print(
        f"{args.base}: its own chat template "
        + (
            "renders training's prompt exactly"
            if record["base_template_matches"]
            else "does not render training's prompt"
        )
        + f'; {args.output} does (mlx_lm.server --chat-template "$(cat {Path(args.output)})")'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
