"""Precomputed VAE latents in safetensors shards, keyed by the autoencoder and the preprocessing.

Layout: `<data.latent_cache>/<key>/` holds `meta.json`, shards `shard-000000.safetensors`, ... (one tensor
per image, named by its relative path; the shard's metadata records each image's file stamp and
micro-conditioning sizes) and `failed.json` (images that could not be decoded). The key hashes the
autoencoder's weights and settings and every preprocessing setting that changes a latent, so a cache made
for another VAE or other buckets is never read by mistake: it simply lives under another key.

Shards are append-only and written atomically, so an interrupted run loses at most one shard of work
and the next run encodes only what is missing (or whose file changed; the newer shard wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from illustrious.data.images.settings import ImageSettings
from illustrious.errors import ConfigError
from illustrious.utils.files import atomic_save, atomic_write_json

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
ENTRIES_KEY = "illustrious.entries"
SHARD_GLOB = "shard-*.safetensors"

Sizes = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # original_size, crop_top_left, target_size


def autoencoder_fingerprint(autoencoder: torch.nn.Module) -> dict:
    """What identifies an autoencoder's output: class, scalar settings, config and a hash of its weights."""
    digest = hashlib.sha256()
    state = autoencoder.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    scalars = {k: v for k, v in vars(autoencoder).items()
               if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str))}
    config = getattr(getattr(autoencoder, "vae", None), "config", None)
    return {"class": f"{type(autoencoder).__module__}.{type(autoencoder).__qualname__}", "scalars": scalars,
            "config": json.loads(json.dumps(dict(config), default=str)) if config is not None else None,
            "weights": digest.hexdigest() if state else None}


def cache_description(autoencoder: torch.nn.Module, settings: ImageSettings) -> dict:
    return {"version": CACHE_VERSION, "autoencoder": autoencoder_fingerprint(autoencoder),
            "preprocess": settings.fingerprint()}


def cache_key(autoencoder: torch.nn.Module, settings: ImageSettings) -> str:
    blob = json.dumps(cache_description(autoencoder, settings), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stamp(file_size: int, mtime_ns: int) -> str:
    return f"{int(file_size)}:{int(mtime_ns)}"


class LatentCache:
    """Read side: path -> (latent, sizes), from the newest shard that holds the path."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not (self.folder / "meta.json").is_file():
            raise FileNotFoundError(f"{self.folder} is not a latent cache (no meta.json).")
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.index: dict[str, tuple[str, str, Sizes]] = {}  # path -> (shard file, stamp, sizes)
        for shard in sorted(self.folder.glob(SHARD_GLOB)):
            with safe_open(shard, framework="pt") as f:
                entries = json.loads((f.metadata() or {}).get(ENTRIES_KEY, "{}"))
            for path, (file_stamp, *sizes) in entries.items():
                self.index[path] = (shard.name, file_stamp, (tuple(sizes[0:2]), tuple(sizes[2:4]), tuple(sizes[4:6])))
        failed_file = self.folder / "failed.json"
        self.failed: dict[str, dict] = json.loads(failed_file.read_text()) if failed_file.is_file() else {}
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.index)

    def has(self, path: str, file_stamp: str) -> bool:
        entry = self.index.get(path)
        return entry is not None and entry[1] == file_stamp

    def failed_for(self, path: str, file_stamp: str) -> dict | None:
        entry = self.failed.get(path)
        return entry if entry is not None and entry["stamp"] == file_stamp else None

    def get(self, path: str) -> tuple[torch.Tensor, Sizes]:
        """The latent as stored (float16 by default; batches make it float32) and its SDXL sizes."""
        shard, _, sizes = self.index[path]
        handle = self._handles.get(shard)
        if handle is None:  # opened lazily in each worker process; safetensors maps the file
            handle = self._handles[shard] = safe_open(self.folder / shard, framework="pt")
        return handle.get_tensor(path), sizes

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        return {**self.__dict__, "_handles": {}}


def open_latent_cache(root: Path, autoencoder: torch.nn.Module, settings: ImageSettings) -> LatentCache:
    """The cache under `root` made for this autoencoder and these settings, or a clear error."""
    key = cache_key(autoencoder, settings)
    folder = Path(root) / key
    if not (folder / "meta.json").is_file():
        others = sorted(p.name for p in Path(root).iterdir() if (p / "meta.json").is_file())
        hint = (f" It holds caches for other autoencoders or preprocessing settings ({', '.join(others)}): they are "
                "stale for this run.") if others else ""
        raise ConfigError(f"No latent cache for this autoencoder and data settings (key {key}) in "
                          f"data.latent_cache={root}.{hint} Run python -m illustrious.cache_latents with this "
                          "run's backbone and data settings.")
    return LatentCache(folder)


class LatentCacheWriter:
    """Write side: buffer latents and flush full shards atomically."""

    def __init__(self, folder: Path, meta: dict, shard_size: int = 1024):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "meta.json").is_file():
            atomic_write_json(self.folder / "meta.json", meta)
        existing = sorted(self.folder.glob(SHARD_GLOB))
        self.next_shard = 1 + max((int(p.stem.split("-")[1]) for p in existing), default=-1)
        failed_file = self.folder / "failed.json"
        self.failed: dict[str, dict] = json.loads(failed_file.read_text()) if failed_file.is_file() else {}
        self.shard_size = shard_size
        self._tensors: dict[str, torch.Tensor] = {}
        self._entries: dict[str, list] = {}
        self.written = 0

    def add(self, path: str, file_stamp: str, latent: torch.Tensor, sizes: Sizes) -> None:
        self._tensors[path] = latent.detach().to("cpu").contiguous()
        self._entries[path] = [file_stamp, *sizes[0], *sizes[1], *sizes[2]]
        self.failed.pop(path, None)
        if len(self._tensors) >= self.shard_size:
            self.flush()

    def fail(self, path: str, file_stamp: str, reason: str, detail: str) -> None:
        self.failed[path] = {"stamp": file_stamp, "reason": reason, "detail": detail}

    def flush(self) -> None:
        if self._tensors:
            final = self.folder / f"shard-{self.next_shard:06d}.safetensors"
            metadata = {ENTRIES_KEY: json.dumps(self._entries)}
            atomic_save(final, lambda tmp: save_file(self._tensors, tmp, metadata=metadata))
            self.next_shard += 1
            self.written += len(self._tensors)
            self._tensors, self._entries = {}, {}
        atomic_write_json(self.folder / "failed.json", self.failed)
