"""safetensors files read and written one tensor at a time, so memory never holds a whole model.

The format: an 8-byte little-endian header length, a JSON header ({name: {dtype, shape,
data_offsets}}, plus an optional ``__metadata__``), then the tensors' bytes. Only the header
is parsed here; tensors come back as numpy arrays of unsigned integers of their element width,
so bf16 passes through untouched without a library that knows it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from lora_style.fileio import UserError

# Bytes per element of the floating-point dtypes a tensor can be streamed in.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
UINT_OF_SIZE = {8: "<u8", 4: "<u4", 2: "<u2"}


class SafetensorsError(UserError):
    """The file is not a whole safetensors file (truncated, or something else)."""


def read_header(path: Path, error: type[Exception] = SafetensorsError) -> tuple[dict, int]:
    """The tensors of a safetensors file ({name: {dtype, shape, data_offsets}}) and where data
    starts; `error` (the caller's own error class) names the file and what is wrong with it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise error(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 << 20):
            raise error(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise error(f"{path}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: not a safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise error(f"{path}: tensor {name} has no dtype/shape/data_offsets")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_size:
            raise error(f"{path}: tensor {name} lies outside the file (truncated download?)")
        if info["dtype"] in DTYPE_SIZES and end - begin != tensor_bytes(info):
            raise error(
                f"{path}: tensor {name} has {end - begin} bytes for shape {info['shape']} of {info['dtype']}"
            )
    return header, 8 + length


class TensorReader:
    """Reads tensors of one safetensors file into two buffers reused for every tensor (the
    bytes as stored, and a transposed copy), so memory never exceeds twice the largest tensor."""

    def __init__(self, handle, header: dict, data_start: int, error: type[Exception] = SafetensorsError):
        import numpy as np

        self.np, self.handle, self.data_start, self.error = np, handle, data_start, error
        largest = max((end - begin for begin, end in (i["data_offsets"] for i in header.values())), default=0)
        self.raw, self.out = bytearray(largest), bytearray(largest)

    def read(self, info: dict, transpose: bool = False):
        """The tensor as unsigned integers of its element width (any float dtype, bf16 too)."""
        np = self.np
        begin, end = info["data_offsets"]
        self.handle.seek(self.data_start + begin)
        view = memoryview(self.raw)[: end - begin]
        if self.handle.readinto(view) != end - begin:
            raise self.error(f"{self.handle.name}: file ends inside a tensor (truncated?)")
        dtype = UINT_OF_SIZE[DTYPE_SIZES[info["dtype"]]]
        array = np.frombuffer(view, dtype=dtype).reshape(info["shape"])
        if not transpose:
            return array
        result = np.frombuffer(memoryview(self.out)[: end - begin], dtype=dtype)
        result = result.reshape(info["shape"][::-1])
        transpose_into(result, array)
        return result


_POOL = None


def transpose_into(dst, src) -> None:
    """dst[...] = src.T for a 2-D LoRA matrix (one side the rank, the other thousands), the
    conversion's one real computation. numpy's plain transposed copy of a [rank, 27648] matrix
    runs at a third of the speed it reaches when fed 16 source rows at a time (those rows' cache
    lines stay hot while the destination is written in order), and the copy releases the GIL, so
    the blocks are shared among the CPU's cores: measured 2-3x (bench/, `make bench`)."""
    import numpy as np

    rows, cols = src.shape
    if rows <= cols:  # lora_A [r, in] -> [in, r]: blocks of 16 source rows
        parts = [(src[i : i + 16], dst[:, i : i + 16]) for i in range(0, rows, 16)]
    else:  # lora_B [out, r] -> [r, out]: already fast; split for the cores only
        step = -(-rows // 4)
        parts = [(src[i : i + step], dst[:, i : i + step]) for i in range(0, rows, step)]
    if src.nbytes < (1 << 20) or (os.cpu_count() or 1) < 2:
        for part_src, part_dst in parts:
            np.copyto(part_dst, part_src.T)
        return
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="transpose")
    for future in [_POOL.submit(np.copyto, d, s.T) for s, d in parts]:
        future.result()


def tensor_bytes(info: dict) -> int:
    """The size of a tensor of a streamable dtype, from its header entry."""
    return math.prod(info["shape"]) * DTYPE_SIZES[info["dtype"]]


def write_safetensors(path: Path, tensors: list[tuple[str, dict, object]], metadata: dict) -> None:
    """Write tensors given as (name, {dtype, shape}, producer) where producer() returns the
    tensor's C-ordered array: the header first, from the shapes, then one tensor at a time."""
    header, offset = {}, 0
    for name, info, _ in tensors:
        nbytes = tensor_bytes(info)
        header[name] = {
            "dtype": info["dtype"],
            "shape": list(info["shape"]),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name, info, produce in tensors:
            array = produce()
            if not array.flags.c_contiguous:
                raise AssertionError(f"{name}: not C-ordered")
            if list(array.shape) != header[name]["shape"]:
                raise AssertionError(f"{name}: produced {array.shape}, declared {info['shape']}")
            out.write(memoryview(array))  # C-contiguous already: no third copy


def human_size(nbytes: float) -> str:
    """A byte count as people read it (decimal units, as file managers and the guide give sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return ""
