"""Collation shared by every data source: tensors stacked, captions run through the caption pipeline."""

from __future__ import annotations

import numpy as np
import torch

from illustrious.data.captions import CaptionPipeline

SIZE_KEYS = ("original_size", "crop_top_left", "target_size")


class Collate:
    """Builds the batch format every module reads: `pixels` (or `latents`), `captions`, micro-conditioning."""

    def __init__(self, captions: CaptionPipeline | None = None):
        self.captions = captions or CaptionPipeline(dropout=0.0)

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict = {"captions": [self.captions(s["captions"]) for s in samples]}
        for key in ("pixels", "latents"):
            if key in samples[0]:
                batch[key] = torch.stack([torch.as_tensor(np.asarray(s[key])) for s in samples])
        for key in SIZE_KEYS:
            if key in samples[0]:
                batch[key] = torch.tensor([s[key] for s in samples], dtype=torch.long)
        for key in samples[0].keys() - batch.keys() - {"captions"}:
            batch[key] = [s[key] for s in samples]  # anything else (layouts, paths) stays a list
        return batch
