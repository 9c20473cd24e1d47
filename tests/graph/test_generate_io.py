"""Held-out prompts read with the file and line of a mistake, and samples.md keeping the generated
text verbatim (lora_style/mlx/generate.py). The prompt against LLaMA-Factory's own rendering is
tests/pod/test_generate_prompt.py."""

from __future__ import annotations

import pytest

from lora_style.mlx import generate


def test_read_prompts_reports_file_and_line(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text('{"instruction": "a", "input": "b"}\n\n{"instruction": 3}\n')
    with pytest.raises(generate.GenerateError, match=r"heldout.jsonl:3: expected"):
        generate.read_prompts(path)


def test_samples_markdown_keeps_generated_text_verbatim():
    text = generate.samples_markdown(
        "Samples: x",
        "intro",
        [
            {
                "instruction": "Write.",
                "input": "",
                "output": "# not a heading\n```code```",
                "rendered": "<|im_start|>...",
            }
        ],
    )
    assert "````text\n# not a heading\n```code```\n````" in text
    assert "## 1. Write." in text
