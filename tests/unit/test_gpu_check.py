"""The GPU check (bench/gpu/), what can be pinned without a GPU: the model it builds has
Qwen2.5-32B's shapes, the run trains with the 32B profile's own 4-bit settings, the arithmetic
that takes a few blocks to 64, and the wheels that travel to the GPU machine."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lora_style.config.train_yaml import load_profile, train_args
from lora_style.training import estimate
from lora_style.training.preflight import run_packages

from helpers.workflow import REPO

GPU = REPO / "bench" / "gpu"


def load(name: str, path=None):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", path or GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


make_model = load("make_model")
check = load("check")
slim_wheel = load("slim_wheel")


def test_the_model_has_qwen25_32b_shapes_block_for_block():
    full = make_model.model_config(64)
    assert {
        k: full[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
            "num_hidden_layers",
        )
    } == {
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "num_hidden_layers": 64,
    }
    assert full["tie_word_embeddings"] is False
    assert make_model.model_config(4) == {**full, "num_hidden_layers": 4}
    # The same size preflight's table gives Qwen2.5-32B (its q/k/v biases aside).
    arch = estimate.arch_from_config(full)
    assert arch.params == pytest.approx(estimate.QWEN25["32"].params, rel=0.015)
    assert (arch.hidden, arch.intermediate, arch.kv_dim, arch.vocab) == (5120, 27648, 1024, 152064)


def test_the_cpu_shrink_keeps_the_head_size_and_widths_of_64():
    small = make_model.model_config(2, shrink=40)
    assert small["hidden_size"] // small["num_attention_heads"] == 128
    assert small["num_key_value_heads"] >= 1
    assert small["intermediate_size"] % 64 == 0 and small["vocab_size"] % 64 == 0
    assert small["vocab_size"] >= 3500  # the sample data's tokenizer fits: every id in range
    assert make_model.model_config(2, shrink=1) == make_model.model_config(2)


def test_the_run_trains_with_the_32b_profiles_own_4bit_settings(tmp_path):
    args = check.build_args(tmp_path / "model-8", 16, 8, cpu=False)
    for key, value in {
        "quantization_bit": 4,
        "bf16": True,
        "optim": "paged_adamw_32bit",
        "flash_attn": "sdpa",
        "gradient_checkpointing": True,
        "lora_rank": 64,
        "lora_target": "all",
        "cutoff_len": 2048,
        "packing": True,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 16,
    }.items():
        assert args[key] == value, key
    # The profile's arguments as the graph builds them, except what the check must change.
    graph = train_args("gpucheck", {"profile": check.PROFILE, "base_model": str(tmp_path / "model-8")})
    changed = {k for k in graph if graph[k] != args.get(k)} | (set(args) - set(graph))
    assert changed == {"max_steps", "eval_steps", "save_steps"}
    assert (args["max_steps"], args["eval_steps"], args["save_steps"]) == (16, 8, 8)
    # The CPU rehearsal adds use_cpu (transformers' condition for bf16 without a GPU), nothing else.
    cpu = check.build_args(tmp_path / "model-8", 16, 8, cpu=True)
    assert {k: v for k, v in cpu.items() if args.get(k) != v} == {"use_cpu": True}
    assert set(load_profile(check.PROFILE)) <= set(args)


def test_a_line_through_two_block_counts_is_extrapolated_to_64():
    line = check.extrapolate({4: 10 + 4 * 0.75, 8: 10 + 8 * 0.75})
    assert line["fixed"] == pytest.approx(10) and line["per_block"] == pytest.approx(0.75)
    assert line["value"] == pytest.approx(10 + 64 * 0.75) and line["at"] == 64
    # More counts: least squares.
    assert check.extrapolate({2: 3.0, 4: 5.2, 8: 8.8})["per_block"] == pytest.approx(0.957, abs=1e-3)
    with pytest.raises(ValueError):
        check.extrapolate({8: 1.0})


def step(n, seconds, tokens=32768, reserved=0):
    return {
        "event": "step",
        "step": n,
        "begin": 100.0 * n,
        "end": 100.0 * n + seconds,
        "tokens": tokens,
        "real_tokens": tokens - 8,
        "max_reserved": reserved,
    }


def test_step_figures_leave_out_the_warm_up_and_take_medians():
    records = [
        {"event": "train_begin", "max_reserved": 5e9},
        step(1, 30.0, reserved=6e9),
        step(2, 9.0, reserved=7e9),
        step(3, 2.0, reserved=7e9),
        step(4, 2.2, reserved=8e9),
        step(5, 2.1, reserved=7e9),
    ]
    figures = check.step_figures(records)
    assert figures["steps"] == 5
    assert figures["step_s"] == pytest.approx(2.1)
    assert figures["tokens_per_s"] == pytest.approx(32768 / 2.1)
    assert figures["steps_per_min"] == pytest.approx(60 / 2.1)
    assert figures["real_tokens_per_step"] == 32760
    assert figures["max_reserved"] == 8e9


def test_the_summary_sets_64_blocks_beside_preflight_and_the_guide(tmp_path):
    args = check.build_args(tmp_path / "m", 16, 8, cpu=False)
    runs = [
        {
            "blocks": b,
            "step_s": 0.5 + 0.25 * b,
            "tokens_per_step": 32768,
            "max_reserved": (4 + 0.6 * b) * 1e9,
            "estimate_gb": 5 + 1.05 * b,
        }
        for b in (4, 8)
    ]
    summary = check.summarise(runs, {"gpu": "test"}, args, cpu=False)
    # preflight's estimate for the full model: the "about 71 GB" that decides whether a pod fits.
    assert summary["preflight_estimate_64_blocks_gb"] == pytest.approx(71.2, abs=0.5)
    full = summary["at_64_blocks"]
    assert full["memory_gb"]["value"] == pytest.approx(4 + 0.6 * 64)
    assert full["step_s"]["value"] == pytest.approx(16.5)
    assert full["steps_per_min"] == pytest.approx(60 / 16.5)
    assert full["tokens_per_s"] == pytest.approx(32768 / 16.5)
    assert full["speed_vs_guide"] == pytest.approx((32768 / 16.5) / (1.4 * 32768 / 60))
    assert check.GUIDE_TOKENS_PER_S == pytest.approx(765, abs=1)
    assert "At 64 blocks" in check.table(summary)
    assert full["memory_line_ok"] and full["step_line_ok"]
    # Timing noise (a busy CPU: more blocks, less time) is said, not extrapolated.
    noisy = check.summarise([{**runs[0], "step_s": 9.0}, runs[1]], {"gpu": "test"}, args, cpu=False)
    assert not noisy["at_64_blocks"]["step_line_ok"]
    assert "step: no usable line" in check.table(noisy)
    one = check.summarise(runs[:1], {"gpu": "test"}, args, cpu=False)
    assert "at_64_blocks" not in one and "No extrapolation" in check.table(one)


def test_nvidia_smi_samples_give_the_peak_in_gb(tmp_path):
    csv = tmp_path / "nvidia-smi.csv"
    csv.write_text(
        "timestamp, index, memory.used [MiB], memory.total [MiB]\n"
        "2026/11/13 10:00:00.000, 0, 1024, 81559\n"
        "2026/11/13 10:00:00.500, 0, 40960, 81559\n"
    )
    assert check.nvidia_smi_peak(csv) == pytest.approx(40960 * 2**20 / 1e9)
    assert check.nvidia_smi_peak(tmp_path / "none.csv") is None


# LLaMA-Factory 0.9.5's declared caps (its METADATA), which the carried wheels must meet.
LLAMAFACTORY_PINS = [
    "transformers<=5.6.0,>=4.55.0",
    "peft<=0.18.1,>=0.18.0",
    "trl<=0.24.0,>=0.18.0",
    "datasets<=4.0.0,>=2.16.0",
    "accelerate<=1.11.0,>=1.3.0",
]


def wheels() -> dict[str, Version]:
    pins = {}
    for line in (GPU / "wheels.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: pin one version"
            pins[req.name] = Version(spec.version)
    return pins


def test_the_wheels_are_the_training_paths_missing_packages_at_llamafactorys_versions():
    pins = wheels()
    assert set(pins) == {
        "llamafactory",
        "transformers",
        "tokenizers",
        "peft",
        "trl",
        "accelerate",
        "datasets",
        "dill",
        "multiprocess",
        "fsspec",
        "omegaconf",
        "bitsandbytes",
    }
    assert pins["llamafactory"] == Version("0.9.5")
    for pin in LLAMAFACTORY_PINS:
        req = Requirement(pin)
        assert pins[req.name] in req.specifier, pin
    assert pins["tokenizers"] in Requirement("tokenizers>=0.22.0,<=0.23.0").specifier  # transformers 5.6
    (need,) = run_packages({"quantization_bit": 4})  # what preflight asks of the pod
    assert pins["bitsandbytes"] in Requirement(need.requirement).specifier
    # Never the web UI's or the API server's: `llamafactory-cli train` imports none of them.
    assert not {"gradio", "fastapi", "uvicorn", "modelscope", "av", "torchdata"} & set(pins)


def fake_wheel(path, backends):
    with zipfile.ZipFile(path, "w") as z:
        record = []
        for name in ["bitsandbytes/__init__.py", *(f"bitsandbytes/libbitsandbytes_{b}.so" for b in backends)]:
            z.writestr(name, b"x" * 1000)
            record.append(f"{name},sha256=abc,1000")
        z.writestr(
            "bitsandbytes-0.50.2.dist-info/RECORD",
            "\n".join(record + ["bitsandbytes-0.50.2.dist-info/RECORD,,"]) + "\n",
        )


def test_the_slim_bitsandbytes_wheel_keeps_cpu_and_cuda130_only(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    fake_wheel(wheel, ["cpu", "cuda118", "cuda128", "cuda130", "rocm64", "xpu2025"])
    first, second = tmp_path / "a.whl", tmp_path / "b.whl"
    removed = slim_wheel.slim(wheel, {"cpu", "cuda130"}, first)
    slim_wheel.slim(wheel, {"cpu", "cuda130"}, second)
    assert first.read_bytes() == second.read_bytes()  # repeatable
    assert len(removed) == 4
    with zipfile.ZipFile(first) as z:
        assert sorted(n for n in z.namelist() if n.endswith(".so")) == [
            "bitsandbytes/libbitsandbytes_cpu.so",
            "bitsandbytes/libbitsandbytes_cuda130.so",
        ]
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
        assert "cuda118" not in record and "cuda130" in record and "__init__.py" in record
    with pytest.raises(SystemExit, match="cuda132"):
        slim_wheel.slim(wheel, {"cuda132"}, tmp_path / "c.whl")


def test_the_hook_records_steps_tokens_and_memory_from_inside_the_trainer(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")

    steps_file = tmp_path / "steps.jsonl"
    monkeypatch.setenv("GPU_CHECK_STEPS", str(steps_file))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the hook's finder goes with it
    hook = load("hook_sitecustomize", GPU / "hook" / "sitecustomize.py")

    class Trainer:  # what the hook needs of transformers' Trainer
        def __init__(self):
            self.callbacks = []

        def add_callback(self, callback):
            self.callbacks.append(callback)

        def training_step(self, model, inputs, num_items_in_batch=None):
            return 0.0

    module = type(sys)("fake_trainer")
    module.Trainer = Trainer
    hook._patch(module)
    trainer = Trainer()
    (callback,) = trainer.callbacks
    state = type("State", (), {"global_step": 0})()
    callback.on_train_begin(None, state, None)
    callback.on_step_begin(None, state, None)
    for _ in range(2):
        trainer.training_step(
            None,
            {
                "input_ids": torch.ones(1, 2048, dtype=torch.long),
                "attention_mask": torch.tensor([[1] * 2040 + [0] * 8]),
            },
        )
    state.global_step = 1
    callback.on_step_end(None, state, None)
    records = [json.loads(line) for line in steps_file.read_text().splitlines()]
    assert [r["event"] for r in records] == ["hooked", "train_begin", "step"]
    assert records[-1]["tokens"] == 4096 and records[-1]["real_tokens"] == 4080
    assert records[-1]["end"] >= records[-1]["begin"]
    assert records[-1]["max_rss"] > 0  # no GPU here: the process's peak RSS
