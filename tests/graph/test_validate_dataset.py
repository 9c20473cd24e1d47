"""Step 2 of the guide, checked: every rule of the SFT JSONL validator, on real files."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from helpers.workflow import SAMPLE_DATA, run_script

GOOD = {"instruction": "Rewrite in Lovecraft's style.", "input": "A cellar.", "output": "Nameless."}


def line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def validate(tmp_path, content: bytes, *extra, env: dict | None = None):
    src = tmp_path / "train_sft.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(content)
    out, report = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "validation.json"
    proc = run_script("validate_dataset.py", src, "--output", out, "--report", report, *extra, env=env)
    return proc, src, out, report


def assert_rejected(tmp_path, content: bytes, line_no: int | None, *needles: str):
    proc, src, out, report = validate(tmp_path, content)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    prefix = f"{src}:{line_no}: " if line_no else f"{src}: "
    errors = [e for e in proc.stderr.splitlines() if e.startswith(prefix)]
    assert errors, f"no error line starting with {prefix!r} in:\n{proc.stderr}"
    for needle in needles:
        assert any(needle in e for e in errors), f"{needle!r} not in {errors}"
    assert not out.exists() and not report.exists(), "an invalid file must leave no output behind"
    return errors


def test_sample_data_is_valid_and_normalised_copy_round_trips(tmp_path):
    proc, _, out, report = validate(tmp_path, SAMPLE_DATA.read_bytes())
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()]
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == rows
    stats = json.loads(report.read_text())
    assert stats["examples"] == len(rows) == 40
    assert stats["duplicates"] == 0
    assert stats["empty_input"] == sum(1 for r in rows if not r["input"])
    assert stats["chars"]["output"]["max"] == max(len(r["output"]) for r in rows)


def test_crlf_bom_and_trailing_blank_lines_are_accepted(tmp_path):
    content = b"\xef\xbb\xbf" + (line(GOOD).rstrip(b"\n") + b"\r\n") * 2 + b"\r\n\n  \n"
    proc, _, out, report = validate(tmp_path, content)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == line(GOOD) * 2  # LF, no BOM, no blank lines
    stats = json.loads(report.read_text())
    assert stats["crlf_line_endings"] and stats["utf8_bom"]
    assert stats["duplicates"] == 1 and stats["duplicate_lines"] == [{"line": 2, "same_as_line": 1}]


def test_extra_keys_are_dropped_and_counted(tmp_path):
    proc, _, out, report = validate(tmp_path, line({**GOOD, "source": "x"}))
    assert proc.returncode == 0
    assert json.loads(out.read_text()) == GOOD
    assert json.loads(report.read_text())["dropped_keys"] == {"source": 1}


def test_invalid_json_names_line_and_column(tmp_path):
    assert_rejected(
        tmp_path,
        line(GOOD) + b'{"instruction": "a", "input": "b",\n',
        2,
        "invalid JSON at column",
        "one complete JSON object",
    )


def test_line_that_is_not_an_object(tmp_path):
    assert_rejected(
        tmp_path, line(GOOD) + b'["a", "b", "c"]\n' + b'"text"\n', 2, "an array, not a JSON object"
    )
    assert_rejected(tmp_path, line(GOOD) + b'"text"\n', 2, "a string, not a JSON object")


def test_whole_file_json_array_is_recognised(tmp_path):
    content = json.dumps([GOOD, GOOD], indent=2).encode()
    errors = assert_rejected(tmp_path, content, 1, "one JSON array, not JSON Lines", "jq -c")
    assert len(errors) == 1, "one clear message, not one per line of the array"


@pytest.mark.parametrize("field", ["instruction", "input", "output"])
def test_missing_field(tmp_path, field):
    obj = {k: v for k, v in GOOD.items() if k != field}
    assert_rejected(tmp_path, line(GOOD) + line(obj), 2, f'missing field "{field}"')


def test_missing_input_hint_says_empty_string(tmp_path):
    obj = {"instruction": "a", "output": "b"}
    assert_rejected(tmp_path, line(obj), 1, 'use "" for an empty input')


@pytest.mark.parametrize(
    "value,kind",
    [(3, "a number"), (None, "null"), (["x"], "an array"), ({"a": 1}, "an object"), (True, "true/false")],
)
def test_non_string_field(tmp_path, value, kind):
    assert_rejected(tmp_path, line({**GOOD, "output": value}), 1, f'field "output" is {kind}, not a string')


def test_blank_output(tmp_path):
    assert_rejected(tmp_path, line({**GOOD, "output": "  \n"}), 1, 'field "output" is blank')


def test_blank_prompt(tmp_path):
    assert_rejected(
        tmp_path,
        line({**GOOD, "instruction": "", "input": " "}),
        1,
        '"instruction" and "input" are both blank',
    )


def test_empty_input_with_instruction_is_fine(tmp_path):
    proc, *_ = validate(tmp_path, line({**GOOD, "input": ""}))
    assert proc.returncode == 0, proc.stderr


def test_invalid_utf8(tmp_path):
    bad = line(GOOD).replace(b"cellar", b"caf\xe9")  # latin-1 e-acute
    assert_rejected(tmp_path, line(GOOD) + bad, 2, "invalid UTF-8", "iconv")


def test_an_escaped_lone_surrogate_is_named_not_a_traceback(tmp_path):
    bad = b'{"instruction": "ok", "input": "", "output": "half a pair: \\ud800"}\n'
    assert_rejected(
        tmp_path, line(GOOD) + bad, 2, 'field "output" holds a lone surrogate', "\\ud800", "fix the escape"
    )


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf\r\n"])
def test_empty_file(tmp_path, content):
    assert_rejected(tmp_path, content, None, "no examples")


def test_every_bad_line_is_reported_in_one_pass(tmp_path):
    content = line(GOOD) + b"nope\n" + line({"instruction": "a"}) + line(GOOD) + b"[1]\n"
    proc, src, *_ = validate(tmp_path, content)
    numbered = re.compile(re.escape(str(src)) + r":(\d+): ")
    lines = {int(m.group(1)) for m in map(numbered.match, proc.stderr.splitlines()) if m}
    assert lines == {2, 3, 5}
    assert "problems; nothing written" in proc.stderr


def test_a_failed_run_removes_stale_outputs(tmp_path):
    """A previous good run's output must not survive a bad edit (nothing stale reaches the pod)."""
    proc, src, out, report = validate(tmp_path, line(GOOD))
    assert proc.returncode == 0 and out.exists()
    src.write_bytes(b"{broken\n")
    proc = run_script("validate_dataset.py", src, "--output", out, "--report", report)
    assert proc.returncode == 1
    assert not out.exists() and not report.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    proc = run_script(
        "validate_dataset.py", tmp_path / "nope.jsonl", "--output", tmp_path / "o", "--report", tmp_path / "r"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot read the file" in proc.stderr and "data:" in proc.stderr


def test_token_counts_and_cutoff_len_with_a_tokenizer(tmp_path, tiny_model):
    long = {**GOOD, "output": "eldritch " * 200}
    proc, _, out, report = validate(
        tmp_path, line(GOOD) + line(long), "--tokenizer", tiny_model, "--cutoff-len", "100"
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(report.read_text())
    assert stats["cutoff_len"] == 100
    assert stats["over_cutoff_len"] == 1 and stats["over_cutoff_len_lines"] == [2]
    assert stats["tokens"]["counted"] and stats["tokens"]["template"] == "qwen"
    assert stats["tokens"]["max"] > 200 > stats["tokens"]["min"]


def test_token_counts_render_with_the_runs_template(tmp_path, tiny_model, monkeypatch):
    """The counts are of the text training sees: the run's chat template, not always qwen's."""
    from lora_style import prompt_format
    from lora_style.data.token_counts import token_lengths

    qwen = json.loads((prompt_format.TEMPLATES_DIR / "qwen.json").read_text())
    long_system = {**qwen, "default_system": qwen["default_system"] + " Answer in the style asked." * 20}
    (tmp_path / "longer.json").write_text(json.dumps(long_system))
    (tmp_path / "qwen.json").write_text(json.dumps(qwen))
    monkeypatch.setattr(prompt_format, "TEMPLATES_DIR", tmp_path)
    examples = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines()[:3]]
    base = token_lengths(examples, str(tiny_model), "qwen")
    longer = token_lengths(examples, str(tiny_model), "longer")
    assert all(b < n for b, n in zip(base, longer)), (base, longer)


# ------------------------------------------------- a hub base model: its tokenizer alone, cached

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_env(tmp_path, **more) -> dict:
    """A Hugging Face cache of the test's own, and no way to the real hub."""
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", **more}


def cache_tokenizer(tmp_path, repo_id: str, tiny_model) -> None:
    """What an earlier run online leaves in the Hugging Face cache: the tokenizer files alone."""
    repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / name, repo / "snapshots" / COMMIT / name)


def test_a_hub_model_without_the_hub_gives_character_counts_and_says_why(tmp_path):
    proc, _, out, report = validate(
        tmp_path,
        SAMPLE_DATA.read_bytes(),
        "--tokenizer",
        "Qwen/Qwen2.5-32B",
        "--cutoff-len",
        "2048",
        env=hub_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(report.read_text())
    assert stats["tokens"]["counted"] is False
    assert (
        "HF_HUB_OFFLINE is set and Qwen/Qwen2.5-32B is not in the Hugging Face cache"
        in stats["tokens"]["why"]
    )
    assert "over_cutoff_len" not in stats and stats["cutoff_len"] == 2048
    assert stats["chars"]["output"]["max"] > 0 and out.exists()
    assert "warning: no token counts: HF_HUB_OFFLINE is set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unreachable_hub_is_no_reason_to_stop(tmp_path):
    """The hub's address answers nothing (a closed port here): the report says so."""
    env = hub_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    proc, _, _, report = validate(tmp_path, SAMPLE_DATA.read_bytes(), "--tokenizer", "acme/tiny", env=env)
    assert proc.returncode == 0, proc.stderr
    why = json.loads(report.read_text())["tokens"]["why"]
    assert why.startswith(
        "the Hugging Face hub cannot be reached (no network?) and acme/tiny is not in the Hugging Face cache"
    ), why


def test_a_hub_models_cached_tokenizer_counts_tokens_as_a_local_one(tmp_path, tiny_model):
    cache_tokenizer(tmp_path, "acme/tiny", tiny_model)
    counts = {}
    for name, tokenizer in {"hub": "acme/tiny", "local": str(tiny_model)}.items():
        proc, _, _, report = validate(
            tmp_path / name,
            SAMPLE_DATA.read_bytes(),
            "--tokenizer",
            tokenizer,
            "--cutoff-len",
            "300",
            env=hub_env(tmp_path),
        )
        assert proc.returncode == 0, proc.stderr
        counts[name] = json.loads(report.read_text())
    assert counts["hub"]["tokens"]["tokenizer"] == "acme/tiny"
    assert counts["hub"]["tokens"]["counted"] and counts["local"]["tokens"]["counted"]
    for key in ("min", "max", "mean", "median"):
        assert counts["hub"]["tokens"][key] == counts["local"]["tokens"][key]
    assert counts["hub"]["over_cutoff_len_lines"] == counts["local"]["over_cutoff_len_lines"]


# ---------------------------------------------- one streaming pass (make bench: performance rows)


def _jsonschema_messages(obj: dict) -> list[str]:
    """The messages the validator gave when it checked each line with jsonschema (before the
    plain type checks of dataset_checks.py): the reference the plain check must equal."""
    import jsonschema

    from lora_style.data.checks import EXAMPLE_SCHEMA, FIELDS, describe

    messages = []
    validator = jsonschema.Draft202012Validator(EXAMPLE_SCHEMA)
    for error in sorted(validator.iter_errors(obj), key=lambda e: str(e.path)):
        if error.validator == "required":
            for name in [n for n in FIELDS if n not in obj]:
                hint = ' (use "" for an empty input)' if name == "input" else ""
                messages.append(f'missing field "{name}"; add "{name}": "..."{hint}')
        elif error.validator == "type":
            name = error.path[0]
            messages.append(
                f'field "{name}" is {describe(error.instance)}, not a string; '
                f'write it as a JSON string ("{name}": "...")'
            )
    return list(dict.fromkeys(messages))


VALUES = ["text", "", 3, 2.5, None, True, ["x"], {"a": 1}]


def test_plain_type_checks_are_the_schemas_rule_with_its_messages():
    """Every combination of a value (or its absence) in each field: the plain check accepts what
    the JSON schema accepts and says what it said, in the same order."""
    import itertools

    from lora_style.data.checks import FIELDS, field_problems, line_problems

    missing = object()
    checked = 0
    for combo in itertools.product(VALUES + [missing], repeat=3):
        obj = {name: value for name, value in zip(FIELDS, combo) if value is not missing}
        expected = _jsonschema_messages(obj)
        assert field_problems(obj) == expected, obj
        example, messages = line_problems(json.dumps(obj).encode())
        if expected:
            assert example is None and messages == expected, obj
        checked += 1
    assert checked == 9**3


def test_a_valid_file_is_written_byte_for_byte_as_before(tmp_path):
    """The normalised copy: keys in field order, extra keys dropped, non-ASCII kept, one LF."""
    rows = [
        {"output": 'é "q"', "input": "", "instruction": "a\\b", "x": 1},
        {"instruction": "中文", "input": "\u00e9", "output": "😀"},
    ]
    content = b"".join(line(r) for r in rows)
    proc, _, out, report = validate(tmp_path, content)
    assert proc.returncode == 0, proc.stderr
    expected = "".join(
        json.dumps({k: r[k] for k in ("instruction", "input", "output")}, ensure_ascii=False) + "\n"
        for r in rows
    ).encode()
    assert out.read_bytes() == expected
    import hashlib

    assert json.loads(report.read_text())["sha256"] == hashlib.sha256(expected).hexdigest()


def test_a_leading_bracket_that_is_not_an_array_is_checked_line_by_line(tmp_path):
    assert_rejected(tmp_path, b"[1, 2\n" + line(GOOD), 1, "invalid JSON")


def peak_rss_mib(args: list) -> float:
    """A validator run's own peak memory: VmHWM, read by the child itself as it ends (a forked
    child's ru_maxrss would carry pytest's memory in it)."""
    import subprocess
    import sys

    from helpers.workflow import SCRIPTS

    probe = (
        "import re, sys; import lora_style.data.validate as v;"
        "code = v.main(sys.argv[2:]);"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024);"
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(SCRIPTS), *map(str, args)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


def test_memory_is_flat_in_the_files_size(tmp_path):
    """Streamed: 40 MB of data costs about what 1 MB does (the whole file used to be in memory
    several times over)."""
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"

    def rows(count: int) -> bytes:  # distinct examples: duplicates are listed in the report
        return b"".join(
            line({**GOOD, "output": f"{i}: " + "Nameless things in the cellar. " * 20}) for i in range(count)
        )

    small.write_bytes(rows(1_000))
    big.write_bytes(rows(60_000))
    assert big.stat().st_size > 40e6
    out = tmp_path / "out"
    base = peak_rss_mib([small, "--output", out / "s.jsonl", "--report", out / "s.json"])
    peak = peak_rss_mib([big, "--output", out / "b.jsonl", "--report", out / "b.json"])
    print(f"peak memory: {base:.0f} MiB for 0.7 MB, {peak:.0f} MiB for {big.stat().st_size / 1e6:.0f} MB")
    assert peak - base < 30


def test_a_huge_line_is_counted_to_cutoff_len_not_tokenised_whole(tmp_path, tiny_model):
    """One 20 MB example: known to be over cutoff_len after its first chunk of text; the report
    says so and lists the line, and memory stays far from what tokenising it whole costs."""
    words = " ".join(["eldritch", "cellar", "nameless", "ancient"] * 600_000)
    content = line(GOOD) + line({**GOOD, "output": words}) + line(GOOD)
    src = tmp_path / "huge.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out"
    peak = peak_rss_mib(
        [
            src,
            "--output",
            out / "t.jsonl",
            "--report",
            out / "r.json",
            "--tokenizer",
            tiny_model,
            "--cutoff-len",
            "100",
        ]
    )
    stats = json.loads((out / "r.json").read_text())
    assert stats["over_cutoff_len_lines"] == [2] and stats["duplicates"] == 1
    assert stats["tokens"]["counted_to_cutoff_lines"] == [2]
    assert stats["tokens"]["max"] > 100
    print(f"peak memory {peak:.0f} MiB for a {len(words) / 1e6:.0f} MB line")
    assert peak < 600


def test_counting_a_long_example_in_chunks_gives_the_whole_count(tiny_model, monkeypatch):
    """Chunks are cut between two words, where the tokenizer starts a new piece anyway: the
    chunks' counts add up to the count of the text tokenised whole."""
    from lora_style.data import token_counts
    from lora_style.data.token_counts import token_lengths

    examples = [
        {**GOOD, "output": "The eldritch cellar, 1928: nameless  things... " * 300},
        {**GOOD, "output": "x" * 5000 + " y"},
    ]  # a chunk with no gap between words
    whole = token_lengths(examples, str(tiny_model))
    monkeypatch.setattr(token_counts, "CHUNK_CHARS", 1000)
    assert token_lengths(examples, str(tiny_model)) == whole
