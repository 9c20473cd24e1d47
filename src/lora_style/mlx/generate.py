"""Generate with the 4-bit base model and the LoRA adapter through mlx-lm, in the training format.

    python scripts/generate.py --adapter-path lora_adapters/lovecraft_mlx \
        --instruction "Rewrite the following passage in the style of H. P. Lovecraft." \
        --input "The bus broke down on a country road."
    python scripts/generate.py --adapter-path lora_adapters/lovecraft_mlx \
        --prompt "Rewrite the following passage in the style of H. P. Lovecraft. ### The bus broke down."
    python scripts/generate.py --model models/Qwen2.5-32B-4bit-mlx --adapter-path lora_adapters/lovecraft_mlx \
        --prompts-file data/training/lovecraft/heldout_prompts.jsonl --samples-md results/lovecraft/samples.md

The prompt is rendered exactly as LLaMA-Factory rendered the training examples
(scripts/prompt_format.py, from the run's template in config/templates/): the instruction and
the input joined by a newline in the *user* turn, after the template's default system prompt.
The guide's single-string form ``instruction ### input`` is split on the first ``###``. The
rendered prompt is logged to standard error, so a wrong format shows at once. Generation stops
at the template's stop words (``<|im_end|>`` for qwen), as LLaMA-Factory's own chat does.

--model and --template default to what the adapter's metadata.json records (the local 4-bit
base model and the training template), so ``--adapter-path`` alone is enough for a bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_style.fileio import UserError, read_json_object, write_atomic
from lora_style.prompt_format import load_template, render_prompt, split_guide_prompt


class GenerateError(UserError):
    """A usage or input problem; the message says what to change."""


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt. The template already holds every special token, so the
    tokenizer must add none (LLaMA-Factory encodes with add_special_tokens=False too)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def read_prompts(path: str | Path) -> list[dict]:
    """The {"instruction", "input"} objects of a JSONL file (a held-out file, or SFT data)."""
    prompts = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenerateError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("instruction"), str)
            or not isinstance(obj.get("input", ""), str)
        ):
            raise GenerateError(
                f'{path}:{number}: expected {{"instruction": "...", "input": "..."}} with string values'
            )
        prompts.append({"instruction": obj["instruction"], "input": obj.get("input", "")})
    if not prompts:
        raise GenerateError(f"{path}: no prompts")
    return prompts


def read_metadata(adapter_path: str | None) -> dict:
    path = Path(adapter_path) / "metadata.json" if adapter_path else None
    if path and path.is_file():
        return read_json_object(path, GenerateError, "the bundle's metadata")
    return {}


def load_model(model_path: str, adapter_path: str | None, template: dict):
    """mlx-lm's model and tokenizer, the adapter applied, the template's stop words as EOS."""
    if not (Path(model_path) / "config.json").is_file():
        # mlx_lm.load would take a missing path for a hub id and download it.
        raise GenerateError(
            f"--model {model_path}: no local MLX model there; build it with "
            "`snakemake models/<base>-4bit-mlx` (scripts/quantize_base.py)"
        )
    if adapter_path and not (Path(adapter_path) / "adapters.safetensors").is_file():
        raise GenerateError(
            f"--adapter-path {adapter_path}: no adapters.safetensors; convert the "
            "adapter first (scripts/convert_peft_to_mlx.py)"
        )
    import mlx_lm

    model, tokenizer = mlx_lm.load(model_path, adapter_path=adapter_path)
    for word in template.get("stop_words", []):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) == 1:
            tokenizer.add_eos_token(ids[0])
    return model, tokenizer


def generate(
    model,
    tokenizer,
    prompt_ids: list[int],
    template: dict,
    max_tokens: int = 200,
    temp: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
) -> str:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    text = mlx_lm.generate(
        model, tokenizer, prompt_ids, max_tokens=max_tokens, sampler=make_sampler(temp=temp, top_p=top_p)
    )
    for word in template.get("stop_words", []):  # stop words that are not single tokens
        text = text.split(word, 1)[0]
    return text.strip()


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def samples_markdown(title: str, intro: str, samples: list[dict]) -> str:
    lines = [f"# {title}", "", intro, ""]
    for number, sample in enumerate(samples, 1):
        lines += [f"## {number}. {sample['instruction'] or '(no instruction)'}", ""]
        if sample["input"]:
            lines += ["Input:", "", _fence(sample["input"]), ""]
        lines += ["Output:", "", _fence(sample["output"] or "(nothing generated)"), ""]
    if samples:
        lines += [
            "<details><summary>The first prompt exactly as the model saw it</summary>",
            "",
            _fence(samples[0]["rendered"]),
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="MLX base model directory (default: metadata.json's base_model)")
    parser.add_argument("--adapter-path", help="mlx-lm adapter directory (without it: the base model alone)")
    parser.add_argument("--template", help="prompt template name (default: metadata.json's, else qwen)")
    parser.add_argument("--system", help="system prompt (default: the template's, as in training)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--instruction", help="the instruction (the user turn's first line)")
    source.add_argument("--prompt", help="the guide's form: 'instruction ### input'")
    source.add_argument("--prompts-file", help="JSONL of {instruction, input}, for --samples-md")
    parser.add_argument("--input", default="", help="the input (with --instruction)")
    parser.add_argument("--samples-md", help="with --prompts-file: write the samples as markdown here")
    parser.add_argument("--count", type=int, default=4, help="with --prompts-file: how many prompts")
    parser.add_argument("--title", default="Samples")
    parser.add_argument("--note", default="", help="a line for the samples file's introduction")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temp", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        if args.prompts_file and not args.samples_md:
            raise GenerateError("--prompts-file needs --samples-md FILE")
        if args.samples_md:
            Path(args.samples_md).unlink(missing_ok=True)
        metadata = read_metadata(args.adapter_path)
        model_path = args.model or metadata.get("base_model")
        if not model_path:
            raise GenerateError("no --model, and no metadata.json in --adapter-path naming the base model")
        template_name = args.template or metadata.get("prompt_format", {}).get("template") or "qwen"
        template = load_template(template_name)
        if args.prompts_file:
            prompts = read_prompts(args.prompts_file)[: args.count]
        elif args.prompt is not None:
            instruction, input_ = split_guide_prompt(args.prompt)
            prompts = [{"instruction": instruction, "input": input_}]
        else:
            prompts = [{"instruction": args.instruction, "input": args.input}]
        model, tokenizer = load_model(model_path, args.adapter_path, template)
    except (GenerateError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    samples = []
    for prompt in prompts:
        rendered = render_prompt(prompt["instruction"], prompt["input"], template, args.system)
        ids = encode_prompt(tokenizer, rendered)
        print(
            f"rendered prompt (template {template_name}, {len(ids)} tokens):\n{rendered}",
            file=sys.stderr,
            flush=True,
        )
        output = generate(model, tokenizer, ids, template, args.max_tokens, args.temp, args.top_p, args.seed)
        samples.append({**prompt, "rendered": rendered, "output": output})
        if not args.samples_md:
            print(output, flush=True)
    if args.samples_md:
        intro = (
            f"Base model `{model_path}`, adapter `{args.adapter_path or '(none)'}`, template "
            f"`{template_name}`; temperature {args.temp}, top-p {args.top_p}, seed {args.seed}, "
            f"at most {args.max_tokens} tokens. Prompts from `{args.prompts_file}`."
            + (f" {args.note}" if args.note else "")
        )
        write_atomic(args.samples_md, samples_markdown(args.title, intro, samples).encode("utf-8"))
        print(f"wrote {len(samples)} samples to {args.samples_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
