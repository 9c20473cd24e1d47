"""Benchmark: adapter conversion against `cp` of the same bytes, measured in the same run.

    python scripts/bench_convert.py                 # the guide's size: Qwen2.5-32B, rank 64 (~2.1 GB)
    python scripts/bench_convert.py --layers 8      # a quick run (~270 MB)

Writes a synthetic PEFT adapter with Qwen2.5-32B's shapes (fp32, as LLaMA-Factory saves LoRA
weights; random values, since only bytes and shapes matter here) and a matching base config.json,
then times, alternately and --repeat times each:

- baseline: `cp` of adapter_model.safetensors (the least any conversion must do: read and write
  every byte once);
- conversion: `python scripts/convert_peft_to_mlx.py` as the graph's rule runs it (a new process,
  imports and the mlx-lm self-check included).

It prints the medians, their ratio, and the conversion's peak memory against the adapter's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
# Qwen2.5-32B (config.json of the hub model).
QWEN25_32B = dict(hidden_size=5120, intermediate_size=27648, num_attention_heads=40,
                  num_key_value_heads=8, num_hidden_layers=64, vocab_size=152064)
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def module_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA target in one block."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i),
            "mlp.down_proj": (i, h)}


def write_adapter(out: Path, layers: int, rank: int, alpha: int) -> int:
    """A PEFT adapter folder with the 32B shapes for `layers` blocks; returns its size in bytes."""
    from safetensors.numpy import save_file

    cfg = {**QWEN25_32B, "num_hidden_layers": layers}
    shapes = module_shapes(cfg)
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        for path, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{path}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, fan_in), np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((fan_out, rank), np.float32)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.05, "target_modules": [p.split(".")[-1] for p in TARGETS],
        "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
        "modules_to_save": None, "base_model_name_or_path": "Qwen/Qwen2.5-32B",
    }))
    return (out / "adapter_model.safetensors").stat().st_size


def write_base_config(out: Path, layers: int) -> None:
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({
        **QWEN25_32B, "num_hidden_layers": layers, "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"], "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "tie_word_embeddings": False,
    }))


def run_child(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS of a child, read from its own rusage via a tiny wrapper."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
               "d = time.perf_counter() - t; "
               "sys.stderr.write(r.stderr.decode()[-2000:]) if r.returncode else None; "
               "print(d, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(r.returncode)")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    seconds, maxrss_kb = proc.stdout.split()
    return float(seconds), int(maxrss_kb) * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=64, help="blocks with LoRA (32B: 64)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        size = write_adapter(tmp / "peft", args.layers, args.rank, 4 * args.rank)
        write_base_config(tmp / "base", args.layers)
        src = tmp / "peft" / "adapter_model.safetensors"
        copies, converts, peaks = [], [], []
        for i in range(args.repeat):
            seconds, _ = run_child(["cp", str(src), str(tmp / f"copy{i}.safetensors")])
            copies.append(seconds)
            (tmp / f"copy{i}.safetensors").unlink()
            seconds, peak = run_child([sys.executable, str(SCRIPTS / "convert_peft_to_mlx.py"),
                                       "--input", str(tmp / "peft"), "--output", str(tmp / f"mlx{i}"),
                                       "--base", str(tmp / "base")])
            converts.append(seconds)
            peaks.append(peak)
            out = tmp / f"mlx{i}" / "adapters.safetensors"
            assert out.stat().st_size >= size - 1_000_000, "the conversion wrote less than it read"
            for f in (tmp / f"mlx{i}").iterdir():
                f.unlink()
        cp_s, conv_s = statistics.median(copies), statistics.median(converts)
        mb = 1024 * 1024
        print(f"adapter: {args.layers} blocks x 7 modules, rank {args.rank}, {size / mb:.0f} MiB (fp32)")
        print(f"cp (baseline):    median {cp_s:.2f} s of {args.repeat}: {', '.join(f'{s:.2f}' for s in copies)}")
        print(f"convert_peft_to_mlx: median {conv_s:.2f} s of {args.repeat}: {', '.join(f'{s:.2f}' for s in converts)}")
        print(f"ratio convert / cp: {conv_s / cp_s:.2f}")
        print(f"convert peak RSS: {max(peaks) / mb:.0f} MiB = {max(peaks) / size:.3f} x the adapter's size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
