"""Sharded checkpoint folders (FSDP2's `trainer.strategy.save_distributed_checkpoint=true`): written by torch's
distributed checkpoint (DCP) on every rank, then sealed and verified by us, and read back without running code.

A folder holds each rank's shards (`__<rank>_0.distcp`), DCP's index (`.metadata`) and Lightning's loop state
(`meta.pt`). Once every rank has written, global rank 0 adds `illustrious.json` (written last, atomically): the
step, the epoch and every file's size and sha256. A folder without it is incomplete (the run stopped mid-save);
one whose files differ from it is corrupted. Either is refused like a truncated single-file checkpoint.

Reading: DCP's index is a pickle and DCP unpickles non-tensor entries with `torch.load(weights_only=False)`.
Here the index is unpickled with a `find_class` allowlist of DCP's own metadata classes (the standard way to
restrict what a pickle may build: nothing else can be named, so nothing else can run), the entries with
`weights_only=True`, and `meta.pt` with `torch.load(weights_only=True)`. A different world size is fine: DCP
reshards on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from illustrious.checkpoint_io import CheckpointError
from illustrious.utils.files import atomic_write_json

MANIFEST = "illustrious.json"
META = "meta.pt"  # Lightning's name for the loop state beside the shards
FORMAT = "illustrious.sharded/1"


def is_sharded(path: str | Path) -> bool:
    return Path(path).is_dir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def seal(folder: str | Path, global_step: int, epoch: int, world_size: int) -> Path:
    """Record a complete folder (call on one rank once every rank's save returned)."""
    folder = Path(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")}
    manifest = folder / MANIFEST
    atomic_write_json(manifest, {"format": FORMAT, "global_step": global_step, "epoch": epoch,
                                 "world_size": world_size, "files": files})
    return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{folder} is an incomplete sharded checkpoint: no {MANIFEST} (the run stopped before "
                              "every rank had written its shards).")
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
            raise ValueError(f"format {data.get('format')!r}")
    except ValueError as e:
        raise CheckpointError(f"{manifest} is unreadable ({e}).") from None
    return data


def verify(folder: str | Path, checksums: bool = True) -> dict:
    """The folder's manifest, after checking that every file it lists is there with its size (and sha256)."""
    folder = Path(folder)
    data = read_manifest(folder)
    for name, expected in data["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder} is missing {name}, which its {MANIFEST} lists.")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointError(f"{path} is truncated: {path.stat().st_size} bytes, {expected['bytes']} written.")
        if checksums and _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path} is corrupted: its bytes do not match the checksum stored when it was written.")
    if ".metadata" not in data["files"]:
        raise CheckpointError(f"{folder} has no DCP index (.metadata): not a sharded checkpoint.")
    return data


# -- reading without running code ------------------------------------------------------------------------
def _allowed() -> dict[tuple[str, str], Any]:
    import pathlib

    import torch.distributed.checkpoint.filesystem as fs
    import torch.distributed.checkpoint.metadata as md
    from torch.serialization import _get_layout

    names = ["Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
             "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"]
    allowed = {(md.__name__, n): getattr(md, n) for n in names if hasattr(md, n)}
    allowed[(fs.__name__, "_StorageInfo")] = fs._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = _get_layout  # looks a layout up by its name
    allowed[("pathlib", "PosixPath")] = pathlib.PosixPath
    allowed[("pathlib", "WindowsPath")] = pathlib.PurePosixPath
    for name in dir(torch):  # dtypes are pickled by name (torch.float32)
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


class _IndexUnpickler(pickle.Unpickler):
    allowed: dict = {}

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index; refusing to load it") from None


def load_index(path: str | Path):
    """DCP's `.metadata`, unpickled with the allowlist."""
    _IndexUnpickler.allowed = _IndexUnpickler.allowed or _allowed()
    with open(path, "rb") as f:
        try:
            return _IndexUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{path}: not a readable DCP index ({e}).") from None


def _reader(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = load_index(Path(self.path) / ".metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def _planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafePlanner(DefaultLoadPlanner):
        """DCP's planner, unpickling non-tensor entries (optimizer step counts, param groups) weights-only."""

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafePlanner()


def load_into(folder: str | Path, module: torch.nn.Module, optimizers: list, strict: bool = True) -> dict:
    """Load a verified folder into a sharded `module` and its `optimizers` (every rank calls this); returns the
    loop state (what Lightning keeps in meta.pt: global step, loops, callbacks, LR schedulers)."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    folder = Path(folder)
    state = {"state_dict": get_model_state_dict(module)}  # this rank's shards, filled in place
    load(state, storage_reader=_reader(folder), planner=_planner())
    set_model_state_dict(module, state["state_dict"], options=StateDictOptions(strict=strict))
    for i, optimizer in enumerate(optimizers):
        key = f"optimizer_{i}"
        optim_state = {key: get_optimizer_state_dict(module, optimizer)}
        load(optim_state, storage_reader=_reader(folder), planner=_planner())
        set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[key],
                                 options=StateDictOptions(cpu_offload=True))
    return torch.load(folder / META, map_location="cpu", weights_only=True)
