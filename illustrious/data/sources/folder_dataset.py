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

from illustrious.data.images.decode import ImageError
from illustrious.data.images.preprocess import load_pixels, to_pixels
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.data.loading.batching import CROP_STREAM, LoadedBatch, sample_rng
from illustrious.data.loading.sample import caption_record, sample_record
from illustrious.data.storage.latent_cache import LatentCache, stamp

MAX_REPLACEMENTS = 16  # tries per failed sample before the bucket is declared unusable


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
        image = {}
        if self.latents is not None:
            image["latents"], sizes = self.latents.get(row["path"])
        else:
            bucket_w, bucket_h = (int(v) for v in self.bucket_sizes[index])
            pixels, sizes = load_pixels(self.root / row["path"], row["orientation"], bucket_w, bucket_h,
                                        self.settings, rng)
            image["pixels"] = to_pixels(pixels)
        return sample_record(self.caption_record(row, tags), sizes, **image, path=row["path"], tags=tags,
                             rating=row["rating"], score=row["score"], created=row["created"])

    def caption_record(self, row: dict, tags: dict | None = None) -> dict:
        """The caption record: tags by section for captions=illustrious/bigasp, the plain variants for plain."""
        return caption_record(row, self.txt_style, tags)

    def caption_source(self, index: int) -> dict:
        """Sample `index`'s caption record, without loading its image (text caches, chunk grouping)."""
        return self.caption_record(self.row(index))

    def file_stamp(self, index: int) -> str:
        row = self.table.slice(index, 1).select(["file_size", "mtime_ns"]).to_pylist()[0]
        return stamp(row["file_size"], row["mtime_ns"])


class BucketBatches:
    """Map-style dataset whose item for a list of indices (one bucket's batch) is a `LoadedBatch`."""

    def __init__(self, samples: FolderSamples, members: dict[int, np.ndarray], bucket_ids: np.ndarray,
                 seed: int = 0):
        self.samples, self.members, self.bucket_ids, self.seed = samples, members, np.asarray(bucket_ids), seed
        self._bad: set[int] = set()  # per process: indices known not to load

    def __getitem__(self, indices) -> LoadedBatch:
        epoch = getattr(indices, "epoch", None)  # an EpochBatch from the bucket sampler
        indices = [int(i) for i in indices]
        loaded, skipped, sources = [], [], []
        for i in indices:
            sample, source = self._load(i, skipped, epoch), i
            if sample is None:
                sample, source = self._replacement(i, indices, skipped, epoch)
            loaded.append(sample)
            sources.append(source)
        return LoadedBatch(loaded, skipped, epoch=epoch, indices=indices if epoch is not None else None,
                           loaded=sources if sources != indices else None)

    def _load(self, index: int, skipped: list, epoch: int | None = None) -> dict | None:
        if index in self._bad:
            return None
        # random crops drawn per (seed, epoch, sample): the same in every worker and after a resume
        rng = sample_rng(self.seed, epoch, index, CROP_STREAM) if epoch is not None else None
        try:
            return self.samples.load(index, rng)
        except (ImageError, OSError) as e:
            reason = e.reason if isinstance(e, ImageError) else "unreadable_image"
            detail = e.detail if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
            self._bad.add(index)
            skipped.append((self.samples.row(index)["path"], f"{reason}: {detail}"))
            return None

    def _replacement(self, index: int, batch: list[int], skipped: list, epoch: int | None = None) -> tuple[dict, int]:
        bucket = int(self.bucket_ids[index])
        candidates = [int(c) for c in self.members[bucket] if c not in self._bad]
        rng = random.Random(f"{self.seed}:{index}")  # the same choice in every worker and on every rank
        rng.shuffle(candidates)
        preferred = [c for c in candidates if c not in batch] + [c for c in candidates if c in batch]
        for candidate in preferred[:MAX_REPLACEMENTS]:
            sample = self._load(candidate, skipped, epoch)
            if sample is not None:
                return sample, candidate
        w, h = self.samples.bucket_sizes[index]
        raise RuntimeError(f"No sample of bucket {w}x{h} could be loaded (tried {min(len(preferred), MAX_REPLACEMENTS)}"
                           f" replacements for {self.samples.row(index)['path']}); see the skipped files in the log.")
