"""Collation shared by every data source: tensors stacked, captions run through the caption pipeline."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from illustrious.data.captions import CaptionKey, CaptionPipeline
from illustrious.data.captions.embedding_cache import TextEmbeddingCache, variant_key
from illustrious.data.loading.sample import SIZE_KEYS

CAPTION_KEY = "caption_key"  # sample-level: the CaptionKey of its caption draw
SKIPPED_KEY = "skipped"  # batch-level: [(path, reason)] of samples replaced because they failed to load
MASK64 = (1 << 64) - 1
CAPTION_STREAM, CROP_STREAM = 0, 1  # independent draws for one sample


def sample_rng(seed: int, epoch: int, index: int, stream: int = CAPTION_STREAM) -> random.Random:
    """The RNG of one sample's random choices in one epoch: the same in every loader worker, on every rank
    and after a resume (a global RNG is none of these). (seed, epoch, index) are packed into one integer."""
    return random.Random(((stream & 0xFF) << 192) | ((seed & MASK64) << 128) | ((epoch & MASK64) << 64)
                         | (index & MASK64))


def unit_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], in one pass after the copy."""
    return pixels.float().div_(127.5).sub_(1.0)


def to_float(batch: dict) -> dict:
    """8-bit pixels -> float32 in [-1, 1] and half-precision latents -> float32, in place (samples carry
    the compact forms: fewer bytes through worker queues, pinned memory and the bus)."""
    if "pixels" in batch and batch["pixels"].dtype == torch.uint8:
        batch["pixels"] = unit_pixels(batch["pixels"])
    if "latents" in batch and batch["latents"].dtype != torch.float32:
        batch["latents"] = batch["latents"].float()
    return batch


@dataclass
class LoadedBatch:
    """The samples of one batch as a loader produced them, and those it had to skip on the way."""

    samples: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # the epoch and dataset index of each position, when the sampler says (EpochBatch): per-sample RNGs
    epoch: int | None = None
    indices: list[int] | None = None
    # the index each sample was loaded from, where a replacement differs from `indices` (None: the same)
    loaded: list[int] | None = None


class Collate:
    """Builds the batch format every module reads from sample records (loading/sample.py): `pixels` (or
    `latents`), `captions`, micro-conditioning, and with a text-embedding cache `conditioning`.

    A sample's `pixels` are (3, H, W) floats in [-1, 1] or uint8 in [0, 255], its `latents` any float dtype;
    the batch's are float32 (with `defer_float=True` they stay compact and whoever moves the batch to the
    device calls `to_float`).

    Given a `LoadedBatch` it also adds `skipped`, which the data module takes out again (and counts)
    before the batch reaches the model.
    """

    def __init__(self, captions: CaptionPipeline | None = None, defer_float: bool = False, seed: int = 0,
                 text_cache: TextEmbeddingCache | None = None):
        self.captions = captions or CaptionPipeline(dropout=0.0)
        self.seed = seed  # with a LoadedBatch's epoch and indices: each caption drawn from (seed, epoch, index)
        # True: 8-bit pixels and half-precision latents stay as they are, for a data module that converts
        # them after the copy to the device (`to_float`)
        self.defer_float = defer_float
        # set: batches carry the cached encoding of each sample's caption as `conditioning` (a Conditioning)
        self.text_cache = text_cache

    def caption_key(self, epoch: int, index: int) -> CaptionKey:
        """The key of sample `index`'s caption at `epoch` (with a text cache: the variant the cache holds)."""
        return self.drawn_key(CaptionKey(self.seed, epoch, index))

    def drawn_key(self, key: CaptionKey | None) -> CaptionKey | None:
        """The key a caption is drawn from for a sample keyed `key`: itself, or with a text cache the variant
        the cache holds for it."""
        return key if self.text_cache is None or key is None else variant_key(key, self.text_cache.variants)

    def caption(self, source, epoch: int, index: int) -> str:
        """The caption sample `index` trains on at `epoch` (what a batch's `captions` holds for it)."""
        return self.captions(source, self.caption_key(epoch, index))

    def __call__(self, samples: list[dict] | LoadedBatch) -> dict:
        skipped, keys = None, None
        if isinstance(samples, LoadedBatch):
            if samples.epoch is not None and samples.indices is not None:
                # a replacement sample draws as the sample it stands for; a cached entry is its own
                indices = samples.loaded if self.text_cache is not None and samples.loaded else samples.indices
                keys = [self.caption_key(samples.epoch, i) for i in indices]
            samples, skipped = samples.samples, samples.skipped
        # plain lists of samples (streams): each sample's own key (fresh entropy without one, never the global RNG)
        keys = keys or [self.drawn_key(s.get(CAPTION_KEY)) for s in samples]
        batch: dict = {"captions": [self.captions(s["captions"], k) for s, k in zip(samples, keys, strict=True)]}
        if self.text_cache is not None:
            if any(k is None for k in keys):
                raise RuntimeError("A text-embedding cache needs keyed samples (the bucket sampler's epoch and indices, "
                                   "or a stream's caption keys).")
            batch["conditioning"] = self.text_cache.collate([self.text_cache.variant_entry(k.index, k.epoch)
                                                             for k in keys])
        for key in ("pixels", "latents"):
            if key in samples[0]:
                batch[key] = torch.stack([torch.as_tensor(np.asarray(s[key])) for s in samples])
        if not self.defer_float:
            to_float(batch)
        for key in SIZE_KEYS:
            if key in samples[0]:
                batch[key] = torch.tensor([s[key] for s in samples], dtype=torch.long)
        for key in samples[0].keys() - batch.keys() - {"captions", CAPTION_KEY}:
            batch[key] = [s[key] for s in samples]  # anything else (layouts, paths) stays a list
        if skipped:  # only batches that had to replace a sample carry the list
            batch[SKIPPED_KEY] = list(skipped)
        return batch
