"""FID and KID between generated images and a folder of real ones, with a local feature model.

torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance` do the statistics; the features come
from a `TimmEmbedder` (a timm model with local safetensors weights), never from a download. The real
features are computed once and kept across `reset()` (`reset_real_features=False`), so one reference set
serves every checkpoint of an evaluation.

FID and KID values depend on the feature model: numbers from another model than the standard FID Inception
network are comparable with each other, not with published FIDs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from illustrious.errors import ConfigError
from illustrious.eval.metrics.embedder import TimmEmbedder
from illustrious.eval.metrics.images import image_files, load_images

log = logging.getLogger(__name__)


def fid(embedder: TimmEmbedder) -> FrechetInceptionDistance:
    return FrechetInceptionDistance(feature=embedder, reset_real_features=False)


def kid(embedder: TimmEmbedder, subset_size: int, subsets: int = 100) -> KernelInceptionDistance:
    return KernelInceptionDistance(feature=embedder, subset_size=subset_size, subsets=subsets,
                                   reset_real_features=False)


def reference_files(folder: str | Path, key: str = "reference_images") -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{key}={str(folder)!r} is not a folder: give a folder of real images for FID/KID.")
    files = image_files(root)
    if len(files) < 2:
        raise ConfigError(f"{key}={str(folder)!r} holds {len(files)} images; FID/KID need at least 2.")
    return files


def add_real_images(metric, files: list[Path], batch_size: int = 32) -> int:
    """Feed the reference images to a FID/KID metric at their own size (the feature model resizes them as it
    resizes generated images); returns how many decoded. Files that do not decode are skipped, counted and
    named in the log."""
    import torch

    used = 0
    for start in range(0, len(files), batch_size):
        images, skipped = load_images(files[start:start + batch_size])
        for file in skipped:
            log.warning("reference image %s does not decode; skipped", file)
        for group in same_size_runs(images):
            metric.update(torch.stack(group), real=True)
        used += len(images)
    if used < 2:
        raise ConfigError(f"Only {used} reference images decoded; FID/KID need at least 2.")
    return used


def same_size_runs(images: list) -> list[list]:
    """Consecutive images of one size together, so each run stacks into a batch."""
    runs: list[list] = []
    for image in images:
        if runs and runs[-1][0].shape == image.shape:
            runs[-1].append(image)
        else:
            runs.append([image])
    return runs
