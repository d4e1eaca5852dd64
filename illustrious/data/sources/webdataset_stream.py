"""Streaming WebDataset shards into bucketed batches: split by rank and worker, shuffled, bucketed per sample.

The pipeline (webdataset's DataPipeline): shard list (or resampled shards) -> this rank's shards -> this
worker's shards -> shard shuffle -> tar members grouped into samples -> sample shuffle buffer ->
`BucketBatcher`, which keeps undecoded samples per bucket and decodes a batch when its bucket has
`batch_size` of them, so every batch is one bucket and the memory held is compressed bytes. When the
buffer holds too many samples, the fullest bucket is filled up with repeats of its own samples and
emitted. A sample that fails to decode is skipped and reported in the batch's `skipped`; the batch is
completed from the same bucket, so no batch is short.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice

import numpy as np
import webdataset as wds

from illustrious.data.images.buckets import BucketSet
from illustrious.data.images.decode import ImageError, image_extensions, read_header
from illustrious.data.images.preprocess import load_pixels, to_pixels
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.labels import caption_variants, has_caption
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.data.loading.batching import Collate, LoadedBatch
from illustrious.data.loading.sample import sample_record

log = logging.getLogger(__name__)
IMAGE_KEYS = frozenset(ext.lstrip(".") for ext in image_extensions())


def split_by_rank(urls: Iterable, rank: int, world_size: int) -> Iterator:
    """This rank's share of the shards (rank and world size from the trainer, not from the environment)."""
    return islice(urls, rank, None, world_size)


def rank_worker_seed(rank: int) -> int:
    """A seed distinct per rank and DataLoader worker, for resampling shards."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return rank * 1000 + (info.id if info is not None else 0)


class BucketBatcher:
    """A pipeline stage: samples in, collated one-bucket batches out."""

    def __init__(self, buckets: BucketSet, settings: ImageSettings, batch_size: int, collate: Collate,
                 buffer: int = 512, require_caption: bool = True, txt_style: str = "tags", drop_last: bool = False):
        self.buckets, self.settings, self.batch_size, self.collate = buckets, settings, batch_size, collate
        self.buffer = max(buffer, batch_size)
        self.require_caption, self.txt_style, self.drop_last = require_caption, txt_style, drop_last

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        pending: dict[int, list[tuple[dict, bytes]]] = {}  # bucket -> (metadata, undecoded image)
        held = 0
        skipped: list[tuple[str, str]] = []
        for raw in samples:
            parsed = self.parse(raw, skipped)
            if parsed is None:
                continue
            meta, data = parsed
            bucket = int(self.buckets.assign([meta["width"]], [meta["height"]], self.settings.max_pixels)[0])
            pending.setdefault(bucket, []).append((meta, data))
            held += 1
            if len(pending[bucket]) >= self.batch_size or held > self.buffer:
                if len(pending[bucket]) < self.batch_size:  # buffer full: emit the fullest bucket, filled up
                    bucket = max(pending, key=lambda b: len(pending[b]))
                group = pending.pop(bucket)
                held -= len(group)
                batch = self.decode(bucket, group, skipped)
                if batch is not None:
                    yield batch
                    skipped = []
        if not self.drop_last:  # end of the stream: what is left, filled up from its own bucket
            for bucket, group in pending.items():
                batch = self.decode(bucket, group, skipped)
                if batch is not None:
                    yield batch
                    skipped = []

    def parse(self, raw: dict, skipped: list) -> tuple[dict, bytes] | None:
        """Metadata and image bytes of a sample, or None (filtered, or broken and recorded in `skipped`)."""
        name = raw.get("__key__", "?")
        image_key = next((k for k in raw if k in IMAGE_KEYS), None)
        try:
            meta = json.loads(raw["json"]) if "json" in raw else {}
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            skipped.append((f"{name}.json", f"json_broken: {e}"))
            meta = {}
        path = meta.get("path") or f"{raw.get('__url__', '')}:{name}"
        if image_key is None:
            skipped.append((path, "unreadable_image: no image in the sample"))
            return None
        data = raw[image_key]
        if "width" not in meta or "height" not in meta:  # shards not written by make_shards: read the header
            try:
                header = read_header(data, self.settings.bomb_pixels)
            except ImageError as e:
                skipped.append((path, f"{e.reason}: {e.detail}"))
                return None
            meta.update(width=header.width, height=header.height, orientation=header.orientation)
        if "caption" not in meta and "txt" in raw:
            try:
                meta["caption"] = raw["txt"].decode("utf-8-sig").strip()
            except UnicodeDecodeError:
                skipped.append((path, "caption_undecodable: not UTF-8 text"))
        tags = {c: list((meta.get("tags") or {}).get(c) or []) for c in TAG_CATEGORIES}
        meta.update(path=path, tags=tags)
        w, h = int(meta["width"]), int(meta["height"])
        if w * h > self.settings.bomb_pixels:
            skipped.append((path, f"decompression_bomb: {w}x{h} pixels (data.bomb_megapixels)"))
            return None
        if self.settings.keeps(w, h) is not None:
            return None  # filtered by the preprocessing settings, as the folder source does
        if self.require_caption and not has_caption(meta.get("caption"), tags):
            return None
        return meta, data

    def decode(self, bucket: int, group: list, skipped: list) -> dict | None:
        bucket_w, bucket_h = self.buckets[bucket]
        samples = []
        for meta, data in group:
            try:
                pixels, sizes = load_pixels(data, int(meta.get("orientation") or 1), bucket_w, bucket_h,
                                            self.settings)
            except (ImageError, OSError) as e:
                reason = f"{e.reason}: {e.detail}" if isinstance(e, ImageError) else f"unreadable_image: {e}"
                skipped.append((meta["path"], reason))
                continue
            samples.append(sample_record(caption_variants(meta.get("caption"), meta["tags"], self.txt_style), sizes,
                                         pixels=to_pixels(pixels), path=meta["path"], tags=meta["tags"],
                                         rating=meta.get("rating"), score=meta.get("score"),
                                         created=meta.get("created")))
        if not samples:
            return None  # nothing in this group decodes; the stream goes on
        decoded = len(samples)
        samples.extend(samples[i % decoded] for i in range(self.batch_size - decoded))  # fill up from the bucket
        return self.collate(LoadedBatch(samples[:self.batch_size], list(skipped)))


def stream(urls: list[str], batcher: BucketBatcher, *, rank: int, world_size: int, batches_per_worker: int,
           shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0) -> wds.DataPipeline:
    """The per-worker pipeline; every worker yields exactly `batches_per_worker` batches per epoch."""
    if resampled:  # each rank and worker draws shards at random: no splitting, never runs dry
        source = [wds.ResampledShards(urls, seed=seed, worker_seed=partial(rank_worker_seed, rank),
                                      deterministic=True)]
    else:
        source = [wds.SimpleShardList(urls), partial(split_by_rank, rank=rank, world_size=world_size),
                  wds.split_by_worker, wds.detshuffle(bufsize=max(1, len(urls)), initial=1, seed=seed)]
    stages = [*source, wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    if shuffle_buffer > 1:
        stages.append(wds.detshuffle(bufsize=shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed + rank))
    stages.append(batcher)
    return wds.DataPipeline(*stages).with_epoch(batches_per_worker)


def per_worker(batches_per_rank: int, num_workers: int) -> int:
    return int(np.ceil(batches_per_rank / max(1, num_workers)))
