"""`data.text_cache=<folder>`: train on cached text embeddings, built on first use.

The data module calls `open_text_cache` in `setup` (inside `trainer.fit`, before the first step): it
refuses a cache while any text encoder trains (its output would change, the cache would not), builds the
cache if the folder has none (rank 0, on the training device, the others wait), and refuses one built from
other text encoders, captions or data (`captions/cache_fingerprint.py`). `Collate` then puts each batch's
entries in `batch["conditioning"]`, which `DiffusionModule` uses instead of encoding `batch["captions"]`.
What the cache holds (K caption variants per sample, one drawn per epoch): `captions/embedding_cache.py`.
`sources` are the samples' caption records: `CaptionSources` (index -> record, for sources that know their
length) or streamed ones that give `(key, record)` pairs themselves (`items()`, e.g. WebDataset shards).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path

from illustrious.data.captions.cache_fingerprint import cache_description
from illustrious.data.captions.embedding_cache import TextEmbeddingCache, check_variants
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)


class CaptionSources:
    """Index -> a sample's caption record, without loading images: `fn(i)` for i in range(length)."""

    def __init__(self, length: int, fn: Callable[[int], object]):
        self.length, self.fn = length, fn

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.fn(index)


def check_text_encoders_frozen(backbone) -> None:
    """A cache holds the text encoders' output: none of them may train, fully or through LoRA."""
    groups = backbone.text_encoder_groups()
    training = [g for g, key in groups.items() if not backbone.text_encoder_frozen(key)]
    adapted = [g for g in groups if g in getattr(backbone, "adapter_prefixes", {})]
    if training or adapted:
        what = ", ".join([*(f"{g} trains (lr > 0)" for g in training), *(f"{g} has LoRA adapters" for g in adapted)])
        raise ConfigError(f"data.text_cache holds fixed text-encoder outputs, but {what}: the cached embeddings would "
                          "not follow the training text encoders. Freeze them (optim.text_encoder_lr=0 and no "
                          "optim.lrs.text_encoder_* above 0; LoRA on the denoiser only), or set data.text_cache=null.")


def open_text_cache(folder: str | Path, variants: int, seed: int, sources, pipeline, data_signature: str,
                    trainer, batch_size: int = 64) -> TextEmbeddingCache:
    """The checked cache for this run, built first if `folder` holds none."""
    backbone = getattr(getattr(trainer, "lightning_module", None), "backbone", None)
    if backbone is None:
        raise ConfigError("data.text_cache needs the module's backbone (its text encoders); this module has none.")
    check_text_encoders_frozen(backbone)
    check_variants(variants, getattr(pipeline, "augments", True))
    cache = TextEmbeddingCache(Path(folder).expanduser(), variants, seed)
    description = cache_description(backbone, pipeline, data_signature)
    if not cache.is_built():
        if trainer.is_global_zero:
            build(cache, backbone, sources, pipeline, description, trainer.strategy.root_device, batch_size)
        trainer.strategy.barrier("text_cache")  # the other ranks wait for rank 0's build
    cache.check_built(len(sources) if hasattr(sources, "__len__") else None, description)
    log.info("Training on cached text embeddings from %s (%d variants per sample).", cache.folder, variants)
    return cache


def build(cache: TextEmbeddingCache, backbone, sources, pipeline, description: dict, device, batch_size: int) -> None:
    """Encode on the training device (the module is not placed there yet), then hand the encoders back."""
    encoders = backbone.text_encoders
    home = next(encoders.parameters()).device
    was_training = encoders.training
    log.info("Building the text-embedding cache %s: %s samples x %d variants on %s.", cache.folder,
             len(sources) if hasattr(sources, "__len__") else "all", cache.variants, device)
    start = time.perf_counter()
    encoders.to(device).eval()
    try:
        samples = cache.build(backbone, sources, pipeline, batch_size=batch_size, description=description)
    finally:
        encoders.to(home).train(was_training)
    log.info("Text-embedding cache built in %.1f s (%d samples).", time.perf_counter() - start, samples)


def table_digest(table, columns: list[str]) -> str:
    """A digest of a pyarrow table's columns (their Arrow IPC bytes): the data part of a cache's fingerprint."""
    import pyarrow as pa

    sink = io.BytesIO()
    part = table.select(columns).combine_chunks()
    with pa.ipc.new_stream(sink, part.schema) as writer:
        writer.write_table(part)
    return hashlib.blake2b(sink.getvalue(), digest_size=16).hexdigest()
