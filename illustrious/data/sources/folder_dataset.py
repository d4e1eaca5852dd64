"""Samples of a scanned folder: an index -> pixels (or cached latents), captions, tags and SDXL sizes.

`FolderSamples` loads one sample; `BucketBatches` is the dataset a DataLoader reads with the bucket batch
sampler: its items are whole batches. When a sample fails to decode it is replaced by another member of
the same bucket (chosen deterministically from the failing index, so every rank and worker agrees on what
it does), and the batch reports the skipped path; no batch is ever short and no rank falls out of step.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa

from illustrious.data.batching import LoadedBatch
from illustrious.data.buckets import plan_crop
from illustrious.data.images import ImageError, crop_to_bucket, decode, open_image, upright_size
from illustrious.data.latent_cache import LatentCache, stamp
from illustrious.data.settings import ImageSettings
from illustrious.data.sidecars import TAG_CATEGORIES, tags_caption

MAX_REPLACEMENTS = 16  # tries per failed sample before the bucket is declared unusable


def to_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (3, H, W) uint8; `Collate` makes the batch's floats in [-1, 1] in one pass."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def caption_variants(caption: str | None, tags: dict[str, list[str]], txt_style: str) -> dict[str, str] | str:
    """What the caption pipeline chooses from: the tag prompt and the written caption, under their styles."""
    variants = {}
    tag_prompt = tags_caption(tags)
    if tag_prompt:
        variants["tags"] = tag_prompt
    if caption:
        variants[txt_style] = caption  # an explicit caption wins over tags under the same style
    return variants or ""


class FolderSamples:
    """Index -> sample dict, over the selected manifest rows and their bucket sizes."""

    def __init__(self, root: Path, table: pa.Table, bucket_sizes: np.ndarray, settings: ImageSettings,
                 txt_style: str = "tags", latents: LatentCache | None = None):
        self.root, self.table, self.settings, self.txt_style = Path(root), table, settings, txt_style
        self.bucket_sizes = np.asarray(bucket_sizes)  # (N, 2) (w, h) per sample
        self.latents = latents

    def __len__(self) -> int:
        return self.table.num_rows

    def row(self, index: int) -> dict:
        return self.table.slice(index, 1).to_pylist()[0]

    def load(self, index: int, rng: random.Random | None = None) -> dict:
        row = self.row(index)
        tags = {c: row[f"tags_{c}"] or [] for c in TAG_CATEGORIES}
        sample = {"captions": caption_variants(row["caption"], tags, self.txt_style), "path": row["path"],
                  "tags": tags, "rating": row["rating"], "score": row["score"], "created": row["created"]}
        if self.latents is not None:
            latent, (original, crop, target) = self.latents.get(row["path"])
            sample["latents"] = latent
        else:
            bucket_w, bucket_h = (int(v) for v in self.bucket_sizes[index])
            pixels, (original, crop, target) = load_pixels(self.root / row["path"], row["orientation"],
                                                           bucket_w, bucket_h, self.settings, rng)
            sample["pixels"] = to_pixels(pixels)
        sample.update(original_size=tuple(original), crop_top_left=tuple(crop), target_size=tuple(target))
        return sample

    def file_stamp(self, index: int) -> str:
        row = self.table.slice(index, 1).select(["file_size", "mtime_ns"]).to_pylist()[0]
        return stamp(row["file_size"], row["mtime_ns"])


def load_pixels(source, orientation: int, bucket_w: int, bucket_h: int, settings: ImageSettings,
                rng: random.Random | None = None):
    """Decode, orient, convert, resize and crop one image to its bucket; returns (H, W, 3) uint8 and the
    SDXL sizes (original_size, crop_top_left, target_size) as (h, w) / (top, left) pairs."""
    image = open_image(source, settings.bomb_pixels)
    with image:
        width, height = upright_size(image, orientation)
        plan = plan_crop(width, height, bucket_w, bucket_h, settings.crop, rng)
        upright = decode(image, orientation, at_least=(plan.resize_width, plan.resize_height))
        pixels = crop_to_bucket(upright, plan)
    sizes = (settings.original_size(width, height), (plan.top, plan.left), (bucket_h, bucket_w))
    return pixels, sizes


class BucketBatches:
    """Map-style dataset whose item for a list of indices (one bucket's batch) is a `LoadedBatch`."""

    def __init__(self, samples: FolderSamples, members: dict[int, np.ndarray], bucket_ids: np.ndarray,
                 seed: int = 0):
        self.samples, self.members, self.bucket_ids, self.seed = samples, members, np.asarray(bucket_ids), seed
        self._bad: set[int] = set()  # per process: indices known not to load

    def __getitem__(self, indices) -> LoadedBatch:
        indices = [int(i) for i in indices]
        loaded, skipped = [], []
        for i in indices:
            sample = self._load(i, skipped)
            if sample is None:
                sample = self._replacement(i, indices, skipped)
            loaded.append(sample)
        return LoadedBatch(loaded, skipped)

    def _load(self, index: int, skipped: list) -> dict | None:
        if index in self._bad:
            return None
        try:
            return self.samples.load(index)
        except (ImageError, OSError) as e:
            reason = e.reason if isinstance(e, ImageError) else "unreadable_image"
            detail = e.detail if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
            self._bad.add(index)
            skipped.append((self.samples.row(index)["path"], f"{reason}: {detail}"))
            return None

    def _replacement(self, index: int, batch: list[int], skipped: list) -> dict:
        bucket = int(self.bucket_ids[index])
        candidates = [int(c) for c in self.members[bucket] if c not in self._bad]
        rng = random.Random(f"{self.seed}:{index}")  # the same choice in every worker and on every rank
        rng.shuffle(candidates)
        preferred = [c for c in candidates if c not in batch] + [c for c in candidates if c in batch]
        for candidate in preferred[:MAX_REPLACEMENTS]:
            sample = self._load(candidate, skipped)
            if sample is not None:
                return sample
        w, h = self.samples.bucket_sizes[index]
        raise RuntimeError(f"No sample of bucket {w}x{h} could be loaded (tried {min(len(preferred), MAX_REPLACEMENTS)}"
                           f" replacements for {self.samples.row(index)['path']}); see the skipped files in the log.")
