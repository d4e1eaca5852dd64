"""Lightning checkpoints as safetensors: tensors in the file, everything else as JSON in its metadata.

A training checkpoint (model, optimizer, LR scheduler, loop counters, callback states) is a tree of dicts,
lists and tensors. Lightning pickles it by default; here the tensors go into a safetensors file and the
tree, with references to them, into the header, so loading a checkpoint never executes code. Pickle
checkpoints are refused unless `allow_pickle=True`, and even then read with `weights_only=True`.

Integrity: files are written atomically (temporary file, fsync, rename), carry a checksum of their tensor
bytes and the global step in the metadata, and are verified when read; NaN/Inf weights are refused both
ways (a diverged run never overwrites a good checkpoint, and never resumes from a bad one).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from illustrious.errors import ConfigError, MissingPathError
from illustrious.utils.files import atomic_save

STRUCTURE_KEY = "illustrious.checkpoint"
FORMAT_VERSION = "1"
CHECKSUM_KEY = "tensor_checksum"  # in the metadata: see tensor_checksum

log = logging.getLogger(__name__)


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


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, corrupted, or holding NaN/Inf weights."""


class NonFiniteError(ValueError):
    """Weights or optimizer state with NaN/Inf values, refused on save and on load."""


class RefusedCheckpoint(ConfigError, CheckpointError):
    """A checkpoint a command was told to read (ckpt_path=, checkpoint=, the run's own to resume) that cannot be
    used. Found before any work starts, it is reported like a bad setting (one message, no stack trace); it is
    still a CheckpointError to code."""


@contextmanager
def refused_as_config_error():
    """Around reading a checkpoint a setting names: CheckpointError / NonFiniteError become RefusedCheckpoint."""
    try:
        yield
    except (CheckpointError, NonFiniteError) as error:
        raise RefusedCheckpoint(str(error)) from error


# Subtrees whose floating tensors must be finite: the weights (also EMA's swapped-in copy) and the optimizer.
# Other entries may legitimately hold infinities (e.g. ModelCheckpoint's "worst score so far").
FINITE_KEYS = ("state_dict", "current_model_state", "optimizer_states")


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: corrupted bytes change it."""
    digest = hashlib.sha256()
    for name in sorted(tensors, key=lambda k: (len(k), k)):
        t = tensors[name]
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return "sha256:" + digest.hexdigest()


def find_nonfinite(tree: Any, where: str = "checkpoint") -> str | None:
    """The path of the first floating tensor with a NaN or Inf under `tree`, or None."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and tree.numel() and not bool(torch.isfinite(tree).all()):
            return where
        return None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = find_nonfinite(value, f"{where}.{key}")
        if found:
            return found
    return None


def check_finite(checkpoint: dict, source: str) -> None:
    """Raise NonFiniteError naming `source` and the tensor if the weights or optimizer state hold NaN/Inf."""
    for key in FINITE_KEYS:
        if key in checkpoint:
            bad = find_nonfinite(checkpoint[key], key)
            if bad:
                raise NonFiniteError(f"{source}: tensor {bad} holds NaN or Inf values; refusing to use it (training "
                                     "diverged before it was written). Resume from an older checkpoint.")


def is_disk_full(error: BaseException) -> bool:
    # safetensors reports I/O errors as its own exception type with the OS error in the message
    return getattr(error, "errno", None) == errno.ENOSPC or "StorageFull" in str(error) or "No space left" in str(error)


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    """Write atomically: a temporary file beside `path`, flushed to disk, then renamed over it. An interrupted
    or failed save (a full disk included) leaves the previous file at `path` untouched."""
    from safetensors.torch import save_file

    path = Path(path)
    check_finite(checkpoint, f"Not saving {path}")
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(checkpoint, tensors, set(), "checkpoint")
    metadata = {STRUCTURE_KEY: json.dumps(structure), "format_version": FORMAT_VERSION,
                CHECKSUM_KEY: tensor_checksum(tensors)}
    for key in ("global_step", "epoch"):
        if isinstance(checkpoint.get(key), int):
            metadata[key] = str(checkpoint[key])
    try:
        atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))  # tmp, fsync, rename
    except BaseException as e:
        if is_disk_full(e):
            kept = f"the previous {path.name} is kept" if path.exists() else "no earlier file was there"
            raise OSError(errno.ENOSPC, f"Disk full while writing checkpoint {path} ({kept}). Free space on "
                          f"{path.parent} (or lower callbacks.checkpoint.keep_last) and resume.") from e
        raise


def read_header(path: str | Path) -> dict:
    """A safetensors file's header (tensor table and metadata), checking the file is as long as it says.

    Cheap (reads only the header): it finds truncated files, not corrupted bytes (`load_checkpoint_file`
    verifies the checksum)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): not a complete safetensors file.")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (header of {n} bytes, file of "
                                  f"{size}).")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path} has a corrupted header ({e}).") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(f"{path} is truncated: its header describes {8 + n + end} bytes, the file has {size}.")
    return header


class _NoTensors(dict):
    """Tensor table for `read_structure`: every tensor reads as None."""

    def __missing__(self, key):
        return None


def read_structure(path: str | Path) -> Any:
    """A safetensors checkpoint's nested structure (run config, loop state, ...) from its header alone, every
    tensor as None: cheap, for checking a stored run config before any weight is read."""
    metadata = read_header(path).get("__metadata__") or {}
    if STRUCTURE_KEY not in metadata:
        raise CheckpointError(f"{path} is not an Illustrious training checkpoint (no structure in its metadata).")
    try:
        return _decode(json.loads(metadata[STRUCTURE_KEY]), _NoTensors())
    except ValueError as error:
        raise CheckpointError(f"{path} has a malformed structure ({error}).") from None


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", allow_pickle: bool = False) -> dict:
    """Read a checkpoint, verifying it: complete, its tensor bytes matching the stored checksum, and its
    weights and optimizer state finite. Raises CheckpointError / NonFiniteError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"Checkpoint {path} does not exist.")
    if path.suffix != ".safetensors":
        from illustrious.weights.safe_read import read_pickle  # one pickle reader for checkpoints and weights

        checkpoint = read_pickle(path, allow_pickle, map_location)
        check_finite(checkpoint, f"Checkpoint {path}")
        return checkpoint
    from safetensors import safe_open

    metadata = read_header(path).get("__metadata__") or {}
    if STRUCTURE_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not an Illustrious training checkpoint "
                         "(no structure in its metadata); load plain weights with safetensors.torch.load_file.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path} could not be read: {e}") from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is None:
        log.warning("%s has no checksum (written before checksums were stored): its bytes cannot be verified.", path)
    elif tensor_checksum(tensors) != expected:
        raise CheckpointError(f"{path} is corrupted: its tensor bytes do not match the checksum stored when it "
                              "was written.")
    checkpoint = _decode(json.loads(metadata[STRUCTURE_KEY]), tensors)
    check_finite(checkpoint, f"Checkpoint {path}")
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    if str(device) != "cpu":
        checkpoint = _move(checkpoint, device)
    return checkpoint


def _move(tree: Any, device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _move(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_move(v, device) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_move(v, device) for v in tree)
    return tree


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning `CheckpointIO` plugin writing and reading the format above."""

    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle
        self._preloaded: tuple[str, dict] | None = None

    def preload(self, path, checkpoint: dict) -> None:
        """Hand over a checkpoint already read and verified (choosing the resume file reads it whole), so
        that the trainer's load of the same path does not read it a second time."""
        self._preloaded = (os.fspath(path), checkpoint)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is not None and preloaded[0] == os.fspath(path):
            device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
            return preloaded[1] if str(device) == "cpu" else _move(preloaded[1], device)
        return load_checkpoint_file(path, map_location or "cpu", allow_pickle=self.allow_pickle)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


class SafetensorsModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, naming files `.safetensors` (so `ckpt_path="last"` finds them)."""

    FILE_EXTENSION = ".safetensors"
