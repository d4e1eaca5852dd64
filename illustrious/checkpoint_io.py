"""Lightning checkpoints as safetensors: tensors in the file, everything else as JSON in its metadata.

A training checkpoint (model, optimizer, LR scheduler, loop counters, callback states) is a tree of dicts,
lists and tensors. Lightning pickles it by default; here the tensors go into a safetensors file and the
tree, with references to them, into the header, so loading a checkpoint never executes code. Pickle
checkpoints are refused unless `allow_pickle=True`, and even then read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

STRUCTURE_KEY = "illustrious.checkpoint"
FORMAT_VERSION = "1"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], seen: set, where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        t = obj.detach().to("cpu")
        storage = t.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (tied weights, views): store later ones as copies
        tensors[name] = t.clone() if storage in seen else t.contiguous()
        seen.add(storage)
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors, seen, where), _encode(v, tensors, seen, f"{where}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return obj.item()
    raise TypeError(
        f"Checkpoint entry {where!r} is a {type(obj).__qualname__}, which a safetensors checkpoint cannot hold; "
        "store plain values (numbers, strings, lists, dicts, tensors) in state dicts."
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    raise ValueError(f"Unknown entry in checkpoint structure: {sorted(obj)}")


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(checkpoint, tensors, set(), "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={STRUCTURE_KEY: json.dumps(structure), "format_version": FORMAT_VERSION})
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", allow_pickle: bool = False) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix != ".safetensors":
        if not allow_pickle:
            raise ValueError(
                f"{path} is not a safetensors checkpoint. Pickle checkpoints can run code when loaded and are "
                "refused; if you trust this file, set allow_pickle=true (it is then read with weights_only=True)."
            )
        return torch.load(path, map_location=map_location, weights_only=True)
    from safetensors import safe_open

    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    with safe_open(path, framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        if STRUCTURE_KEY not in metadata:
            raise ValueError(f"{path} is a safetensors file but not an Illustrious training checkpoint "
                             "(no structure in its metadata); load plain weights with safetensors.torch.load_file.")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _decode(json.loads(metadata[STRUCTURE_KEY]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning `CheckpointIO` plugin writing and reading the format above."""

    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint_file(path, map_location or "cpu", allow_pickle=self.allow_pickle)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


class SafetensorsModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, naming files `.safetensors` (so `ckpt_path="last"` finds them)."""

    FILE_EXTENSION = ".safetensors"
