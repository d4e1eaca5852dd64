"""Collation shared by every data source: tensors stacked, captions run through the caption pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from illustrious.data.captions import CaptionPipeline
from illustrious.data.loading.sample import SIZE_KEYS

SKIPPED_KEY = "skipped"  # batch-level: [(path, reason)] of samples replaced because they failed to load


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


class Collate:
    """Builds the batch format every module reads from sample records (loading/sample.py): `pixels` (or
    `latents`), `captions`, micro-conditioning.

    A sample's `pixels` are (3, H, W) floats in [-1, 1] or uint8 in [0, 255], its `latents` any float dtype;
    the batch's are float32 (with `defer_float=True` they stay compact and whoever moves the batch to the
    device calls `to_float`).

    Given a `LoadedBatch` it also adds `skipped`, which the data module takes out again (and counts)
    before the batch reaches the model.
    """

    def __init__(self, captions: CaptionPipeline | None = None, defer_float: bool = False):
        self.captions = captions or CaptionPipeline(dropout=0.0)
        # True: 8-bit pixels and half-precision latents stay as they are, for a data module that converts
        # them after the copy to the device (`to_float`)
        self.defer_float = defer_float

    def __call__(self, samples: list[dict] | LoadedBatch) -> dict:
        skipped = None
        if isinstance(samples, LoadedBatch):
            samples, skipped = samples.samples, samples.skipped
        batch: dict = {"captions": [self.captions(s["captions"]) for s in samples]}
        for key in ("pixels", "latents"):
            if key in samples[0]:
                batch[key] = torch.stack([torch.as_tensor(np.asarray(s[key])) for s in samples])
        if not self.defer_float:
            to_float(batch)
        for key in SIZE_KEYS:
            if key in samples[0]:
                batch[key] = torch.tensor([s[key] for s in samples], dtype=torch.long)
        for key in samples[0].keys() - batch.keys() - {"captions"}:
            batch[key] = [s[key] for s in samples]  # anything else (layouts, paths) stays a list
        if skipped is not None:
            batch[SKIPPED_KEY] = list(skipped)
        return batch
