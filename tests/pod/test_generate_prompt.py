"""Inference renders the prompt token for token as LLaMA-Factory's training did (not as the guide says).

The reference is LLaMA-Factory itself, in the pod environment: the dataset_info.json this
project writes, LLaMA-Factory's alpaca converter, `get_template_and_fix_tokenizer(tokenizer,
DataArguments(template="qwen"))` and `.encode_oneturn`, on the tiny model's tokenizer. The local
side is what scripts/generate.py runs: prompt_format.render_prompt and mlx-lm's tokenizer.
"""

from __future__ import annotations

import json

import pytest

from lora_style.data.dataset_info import dataset_info
from lora_style.mlx import generate
from lora_style.prompt_format import load_template, render_prompt, split_guide_prompt

from helpers.workflow import run_pod_python

EXAMPLES = [
    # Both fields: the user turn is instruction + "\n" + input.
    {
        "instruction": "Rewrite the following passage in the style of H. P. Lovecraft.",
        "input": "The bus broke down on a country road and we had to walk to the nearest farmhouse.",
    },
    # An empty input: the instruction alone, no trailing newline.
    {"instruction": "Write a short paragraph about an old lighthouse, in Lovecraft's voice.", "input": ""},
    # Only an input, line breaks and non-ASCII inside.
    {"instruction": "", "input": "Line one.\nLine two — with «quotes» and R'lyeh."},
]

POD_SCRIPT = r"""
import json, sys
from transformers import AutoTokenizer
from llamafactory.hparams import DataArguments
from llamafactory.data.parser import get_dataset_list
from llamafactory.data.converter import get_dataset_converter
from llamafactory.data.template import get_template_and_fix_tokenizer

model_dir, dataset_dir, dataset, examples = sys.argv[1:5]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
data_args = DataArguments(template="qwen", dataset_dir=dataset_dir)
template = get_template_and_fix_tokenizer(tokenizer, data_args)
attr = get_dataset_list([dataset], dataset_dir)[0]
converter = get_dataset_converter(attr.formatting, attr, data_args)
out = []
for example in json.loads(examples):
    row = converter({**example, "output": "(the answer)"})
    prompt_ids, _ = template.encode_oneturn(tokenizer, row["_prompt"] + row["_response"],
                                            row["_system"] or None)
    out.append(prompt_ids)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def llamafactory_prompt_ids(tiny_model, tmp_path_factory):
    dataset_dir = tmp_path_factory.mktemp("lf_data")
    (dataset_dir / "dataset_info.json").write_text(json.dumps(dataset_info("t")))
    proc = run_pod_python("-c", POD_SCRIPT, tiny_model, dataset_dir, "t_sft", json.dumps(EXAMPLES))
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mlx_tokenizer(tiny_model):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.mark.pod
@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=["both_fields", "empty_input", "input_only"])
def test_prompt_matches_llamafactory_token_for_token(index, llamafactory_prompt_ids, mlx_tokenizer):
    example = EXAMPLES[index]
    rendered = render_prompt(example["instruction"], example["input"], load_template("qwen"))
    ours = generate.encode_prompt(mlx_tokenizer, rendered)
    theirs = llamafactory_prompt_ids[index]
    assert ours == theirs, (
        f"\nours:   {mlx_tokenizer.decode(ours)!r}\ntheirs: {mlx_tokenizer.decode(theirs)!r}"
    )
    # Not the guide's format: the instruction is in the user turn, after the default system prompt.
    assert rendered.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


@pytest.mark.pod
def test_guide_prompt_form_renders_the_same(llamafactory_prompt_ids, mlx_tokenizer):
    """--prompt 'instruction ### input' is the guide's single-string form of the same example."""
    example = EXAMPLES[0]
    instruction, input_ = split_guide_prompt(f"{example['instruction']} ### {example['input']}")
    rendered = render_prompt(instruction, input_, load_template("qwen"))
    assert generate.encode_prompt(mlx_tokenizer, rendered) == llamafactory_prompt_ids[0]
