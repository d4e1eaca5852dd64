"""Atomic writes that never replace an existing file or folder unless asked."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import torch


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or set overwrite=true to replace it.")


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, copying any that share memory with an earlier one (safetensors refuses shared
    storage: tied weights, slices of a fused tensor)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().to("cpu")
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        shared = ptr is not None and t.untyped_storage().data_ptr() in seen
        out[key] = t.clone().contiguous() if shared else t.contiguous()
        if ptr is not None:
            seen.add(out[key].untyped_storage().data_ptr())
    return out


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None,
                      overwrite: bool = False) -> Path:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file under `path`."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(_unshared(tensors), str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
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
