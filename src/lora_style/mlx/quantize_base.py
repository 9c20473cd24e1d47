"""Build the 4-bit MLX base model with mlx_lm.convert -q, and check it is quantised (the guide's step 8).

    python scripts/quantize_base.py --hf-path Qwen/Qwen2.5-32B --mlx-path models/Qwen2.5-32B-4bit-mlx
    python scripts/quantize_base.py --check models/Qwen2.5-32B-4bit-mlx

The same as ``mlx_lm.convert --hf-path X -q --q-bits 4 --mlx-path Y``, with the guide's warning
made a check: without ``-q`` mlx_lm.convert writes the model at full precision (~61 GB
instead of ~18 GB for Qwen2.5-32B) and nothing complains. So the result must say it is
quantised (``quantization`` in config.json, the requested bits and group size) and every
linear layer of every block must be stored packed with its scales.

--hf-path is a local model directory or a hub id; a hub id is downloaded first (hub.py) into
the Hugging Face cache, where mlx_lm.convert then finds it (on the user's machine; never in
tests). mlx_lm.convert refuses an existing --mlx-path, so this does too, and it converts into a
temporary folder beside it that is renamed into place only after the check: a failed or
interrupted conversion leaves nothing that looks like a model.

Both long parts say how far they are while they run (a job's output is a pipe to the terminal
and its log, scripts/logged.sh): the download shows huggingface_hub's progress bars, the
conversion mlx_lm's stage lines and, every WATCH_SECONDS, how much of the model is written.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from lora_style import hub
from lora_style.config.train_yaml import HUB_ID, is_local_model
from lora_style.fileio import UserError, land, read_json_object, staged_dir
from lora_style.safetensors_io import human_size, read_header

# Linear layers inside a decoder block: what -q must have packed.
BLOCK_LINEAR = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.\d+\..*_proj\.weight$")

# While converting, what is written so far is said this often (a line at least every 30 s).
WATCH_SECONDS = 20.0


class QuantizeError(UserError):
    """The base model cannot be built or is not quantised; the message says what to do."""


def check_quantized(model_dir: str | Path, bits: int = 4, group_size: int = 64) -> dict:
    """Raise QuantizeError unless model_dir is an MLX model quantised to `bits`; return a summary."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise QuantizeError(f"{model_dir}: no config.json; not a model directory")
    config = read_json_object(config_path, QuantizeError)
    quant = config.get("quantization")
    if not isinstance(quant, dict):
        raise QuantizeError(
            f"{config_path}: no 'quantization' entry: the model was converted without -q and is "
            "stored at full precision (for Qwen2.5-32B ~61 GB instead of ~18 GB). Delete "
            f"{model_dir} and convert with -q --q-bits {bits}."
        )
    if quant.get("bits") != bits or quant.get("group_size") != group_size:
        raise QuantizeError(
            f"{config_path}: quantised to {quant.get('bits')} bits in groups of "
            f"{quant.get('group_size')}, expected {bits} bits in groups of {group_size}; delete "
            f"{model_dir} and convert again"
        )
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise QuantizeError(f"{model_dir}: no *.safetensors weights")
    tensors: dict[str, dict] = {}
    for path in files:
        header, _ = read_header(path, QuantizeError)
        tensors.update(header)
    linears = [name for name in tensors if BLOCK_LINEAR.match(name)]
    if not linears:
        raise QuantizeError(f"{model_dir}: no decoder-block linear layers (layers.N.*_proj.weight)")
    unpacked = [
        name
        for name in linears
        if tensors[name]["dtype"] != "U32" or name[: -len("weight")] + "scales" not in tensors
    ]
    if unpacked:
        raise QuantizeError(
            f"{model_dir}: {len(unpacked)} of {len(linears)} block linear layers are not quantised "
            f"(e.g. {unpacked[0]}, {tensors[unpacked[0]]['dtype']}); delete {model_dir} and "
            f"convert with -q --q-bits {bits}"
        )
    size = sum(path.stat().st_size for path in files)
    return {"bits": bits, "group_size": group_size, "quantized_linears": len(linears), "bytes": size}


@contextmanager
def watching(folder: Path, log=print, every: float = WATCH_SECONDS):
    """While the block runs, say every `every` seconds how much of the model is in `folder`:
    mlx_lm.convert quantises lazily, so its long part is writing the weights, silently."""
    stop = threading.Event()
    start = time.monotonic()

    def watch():
        while not stop.wait(every):
            try:
                files = [path.stat().st_size for path in folder.glob("*.safetensors")]
            except OSError:  # a file renamed or removed under us: next time
                continue
            minutes, seconds = divmod(int(time.monotonic() - start), 60)
            log(
                f"converting: {human_size(sum(files))} of 4-bit weights written in "
                f"{len(files)} file{'s' * (len(files) != 1)} ({minutes} min {seconds:02d} s)"
            )

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def quantize(
    hf_path: str,
    mlx_path: str,
    bits: int = 4,
    group_size: int = 64,
    log=print,
    quant_predicate: str | None = None,
) -> dict:
    """mlx_lm.convert -q into mlx_path, checked. `quant_predicate` is one of mlx_lm.convert's
    mixed-bits recipes (mixed_4_6: some layers in 6 bits, the rest in `bits`)."""
    target = Path(mlx_path)
    if target.exists():
        raise QuantizeError(
            f"--mlx-path {target} already exists (mlx_lm.convert will not write "
            "into it); delete it to rebuild the base model"
        )
    local = Path(hf_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise QuantizeError(f"--hf-path {hf_path}: a directory without config.json; not a model")
        source = str(local)
    elif is_local_model(hf_path) or not HUB_ID.match(hf_path):
        raise QuantizeError(f"--hf-path {hf_path}: no such directory, and not a hub id (org/name)")
    else:
        source = hf_path
        # Downloaded here, with progress bars; mlx_lm.convert finds the files in the cache
        # (given the id, not the folder, it names the base model in the model card).
        from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

        log(f"{hf_path}: a hub id; downloading it into the Hugging Face cache")
        try:
            log(f"{hf_path}: in {hub.download_model(hf_path, DEFAULT_ALLOW_PATTERNS)}")
        except hub.HubError as exc:
            raise QuantizeError(f"--hf-path {hf_path}: {exc}") from None

    from mlx_lm.convert import convert

    # mlx_lm.convert refuses an existing --mlx-path; the staged path does not exist yet.
    with staged_dir(target) as staged:
        recipe = f" --quant-predicate {quant_predicate}" if quant_predicate else ""
        log(
            f"mlx_lm.convert --hf-path {source} -q --q-bits {bits} --q-group-size {group_size}"
            f"{recipe} --mlx-path {target}"
        )
        with watching(staged, log):
            convert(
                source,
                str(staged),
                quantize=True,
                q_bits=bits,
                q_group_size=group_size,
                quant_predicate=quant_predicate,
            )
        summary = check_quantized(staged, bits, group_size)
        land(staged, target)
    log(
        f"{target}: {summary['quantized_linears']} block linear layers in {bits} bits, "
        f"{human_size(summary['bytes'])} of weights"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-path", help="local model directory or hub id (e.g. Qwen/Qwen2.5-32B)")
    parser.add_argument("--mlx-path", help="MLX model directory to write (must not exist)")
    parser.add_argument("--check", metavar="DIR", help="only check that DIR is a quantised MLX model")
    parser.add_argument("--q-bits", type=int, default=4)
    parser.add_argument("--q-group-size", type=int, default=64)
    parser.add_argument(
        "--quant-predicate",
        choices=["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"],
        help="a mixed-bits recipe of mlx_lm.convert (some layers in more bits)",
    )
    args = parser.parse_args(argv)
    # A job's stdout is a pipe: mlx_lm's stage lines must reach the terminal as they come.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        if args.check:
            summary = check_quantized(args.check, args.q_bits, args.q_group_size)
            print(
                f"{args.check}: quantised, {summary['quantized_linears']} block linear layers "
                f"in {args.q_bits} bits, {human_size(summary['bytes'])} of weights"
            )
        elif args.hf_path and args.mlx_path:
            quantize(
                args.hf_path,
                args.mlx_path,
                args.q_bits,
                args.q_group_size,
                quant_predicate=args.quant_predicate,
            )
        else:
            parser.error("give --hf-path and --mlx-path, or --check DIR")
    except QuantizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
