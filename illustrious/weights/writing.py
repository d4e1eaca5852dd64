"""Atomic writes that never replace an existing file or folder unless asked."""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import torch


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or set overwrite=true to replace it.")


SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL"}


def stream_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """The safetensors format (8-byte header length, JSON header, raw little-endian data), written one tensor at a
    time: `safetensors.torch.save_file` first copies every tensor into bytes, doubling peak memory for a 7 GB model."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, t in tensors.items():
        size = t.numel() * t.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t in tensors.values():
            if t.numel():
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)  # little-endian hosts
        f.flush()
        os.fsync(f.fileno())


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None,
                      overwrite: bool = False) -> Path:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file under `path`."""
    path = Path(path).expanduser()
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tensors = {k: v.detach().to("cpu") for k, v in tensors.items()}
        stream_safetensors(tensors, tmp, {str(k): str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_folder(path: str | Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """`fill(tmp)` writes the folder's contents into a temporary sibling, which is then renamed to `path`
    (an existing folder, when `overwrite`, is moved aside first and removed only once the new one is in place)."""
    path = Path(path).expanduser()
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        fill(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path
