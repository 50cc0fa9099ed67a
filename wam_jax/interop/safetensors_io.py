"""Streaming safetensors reader/writer on numpy (bf16 via ml_dtypes), no torch needed.

Reading memory-maps each file, so a multi-GB checkpoint is converted tensor by tensor without holding two
copies. Handles single files and diffusers' sharded `*.safetensors.index.json`.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    pass


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > os.path.getsize(path) - 8:
            raise SafetensorsError(f"{path}: header length {n} exceeds the file size; the file is truncated")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def iter_file(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) lazily; arrays are read-only memory maps."""
    header, offset = _read_header(path)
    size = os.path.getsize(path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > offset else np.zeros((0,), np.uint8)
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if offset + end > size:
            raise SafetensorsError(f"{path}: tensor {name!r} extends past the end of the file; the file is truncated")
        dtype = np.dtype(_DTYPES[info["dtype"]])
        arr = data[offset + start: offset + end].view(dtype).reshape(info["shape"])
        yield name, arr


def find_weight_files(directory: str, stem: str = "diffusion_pytorch_model") -> list[str]:
    """The safetensors files of a diffusers model directory (sharded index first, then a single file)."""
    index = os.path.join(directory, f"{stem}.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        paths = [os.path.join(directory, name) for name in files]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise SafetensorsError(f"{index} lists shard(s) that are missing: {missing}")
        return paths
    single = os.path.join(directory, f"{stem}.safetensors")
    if os.path.exists(single):
        return [single]
    found = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")) if os.path.isdir(directory) else []
    if found:
        return [os.path.join(directory, f) for f in found]
    raise SafetensorsError(f"no safetensors weights in {directory!r} (expected {stem}.safetensors or its index)")


def iter_directory(directory: str, stem: str = "diffusion_pytorch_model") -> Iterator[tuple[str, np.ndarray]]:
    for path in find_weight_files(directory, stem):
        yield from iter_file(path)


def write_file(path: str, tensors: Mapping[str, np.ndarray] | Iterator[tuple[str, np.ndarray]],
               metadata: Mapping[str, str] | None = None) -> None:
    """Writes tensors in the safetensors format (atomically, via a temporary file). Arrays are converted to
    bytes one at a time, so memory maps and lazily gathered arrays are never all resident at once."""
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, arr in items:
        dtype = np.dtype(arr.dtype)
        if dtype not in _NAMES:
            raise SafetensorsError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(arr.size * dtype.itemsize)
        header[name] = {"dtype": _NAMES[dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in items:
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)
