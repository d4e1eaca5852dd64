"""Streaming WebDataset shards into bucketed batches: split by rank and worker, shuffled, bucketed per sample,
resumable at any batch.

Per worker and epoch the stream is a pure function of (seed, epoch, rank, worker): the shard order of each pass
over the shards is shuffled from (seed, epoch, pass) and split by rank, then by DataLoader worker; samples go
through a shuffle buffer seeded from (seed, epoch, rank, worker, pass); `BucketBatcher` keeps undecoded samples
per bucket and decodes a batch when its bucket has `batch_size` of them, so every batch is one bucket and the
memory held is compressed bytes. With `chunks` (data.group_by_chunks) a batch also holds one SDXL chunk count:
samples are kept per (bucket, chunks its caption of this epoch needs), the caption being the one `Collate` will
draw for it from (seed, epoch, key). When the buffer holds too many samples, the fullest bucket is filled up with
repeats of its own samples and emitted. A sample that fails to decode is skipped and reported in the batch's
`skipped`; the batch is completed from the same bucket, so no batch is short.

Every sample has a stable key, (shard index, position in the shard), and its caption is drawn from
`CaptionKey(seed, epoch, key)`: the same on any worker, on any rank and after a resume. A resumed stream
(`ShardStream.resume_at`) replays each worker's batches of the epoch up to its position without decoding them
(only tar headers and JSON metadata are read) and continues with the next one. `ShardCaptions` reads every
sample's caption record under the same key, in key order, for a text-embedding cache.

A sample's caption record is built by `loading.sample.caption_record`, the folder source's builder, from the
fields `make_shards` writes into its JSON (caption, tags by category, rating, and the annotation command's
score/year/control tags where the folder was annotated): a folder and its shards give the same captions.
Shards without those fields (older ones, or plain image + .txt tars) build the record from what they have.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from illustrious.data.captions.rng import MASK64, CaptionKey, key_int
from illustrious.data.images.buckets import BucketSet
from illustrious.data.images.decode import ImageError, image_extensions, read_header
from illustrious.data.images.preprocess import load_pixels, to_pixels
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.labels import has_caption
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.data.loading.batching import CAPTION_KEY, Collate, LoadedBatch
from illustrious.data.loading.sample import CAPTION_FIELDS, caption_record, sample_record

log = logging.getLogger(__name__)
IMAGE_KEYS = frozenset(ext.lstrip(".") for ext in image_extensions())
SHARD_BITS = 32  # a sample's key: shard index << 32 | position in the shard
SHARD_KEY, POSITION_KEY = "__shard__", "__position__"


def sample_key(shard: int, position: int) -> int:
    return (shard << SHARD_BITS) | position


def read_shard(url: str, shard: int) -> Iterator[dict]:
    """The raw samples of one shard in order, each tagged with its shard index and position (its key)."""
    tar = wds.tarfile_to_samples(handler=wds.warn_and_continue)(iter([{"url": url}]))
    for position, raw in enumerate(tar):
        raw[SHARD_KEY], raw[POSITION_KEY] = shard, position
        yield raw


class BucketBatcher:
    """A pipeline stage: samples in, collated one-bucket batches out."""

    def __init__(self, buckets: BucketSet, settings: ImageSettings, batch_size: int, collate: Collate,
                 buffer: int = 512, require_caption: bool = True, txt_style: str = "tags", drop_last: bool = False,
                 chunks: Callable[[str], int] | None = None):
        self.buckets, self.settings, self.batch_size, self.collate = buckets, settings, batch_size, collate
        self.buffer = max(buffer, batch_size)
        self.require_caption, self.txt_style, self.drop_last = require_caption, txt_style, drop_last
        self.chunks = chunks  # prompt -> SDXL chunks it needs (chunk_groups.PromptChunks), or None: no grouping

    def __call__(self, samples: Iterable[dict], epoch: int = 0, skip: int = 0) -> Iterator[dict]:
        """Batches of `samples` (of `epoch`, for their caption keys); the first `skip` batches are formed but
        neither decoded nor yielded (a resumed stream's replay)."""
        pending: dict[tuple[int, int], list[tuple[dict, bytes]]] = {}  # (bucket, chunks) -> (metadata, image)
        held = 0
        skipped: list[tuple[str, str]] = []
        for raw in samples:
            parsed = self.parse(raw, skipped)
            if parsed is None:
                continue
            meta, data = parsed
            bucket = int(self.buckets.assign([meta["width"]], [meta["height"]], self.settings.max_pixels)[0])
            key = (bucket, self.chunk_count(meta, epoch))
            pending.setdefault(key, []).append((meta, data))
            held += 1
            if len(pending[key]) >= self.batch_size or held > self.buffer:
                if len(pending[key]) < self.batch_size:  # buffer full: emit the fullest group, filled up
                    key = max(pending, key=lambda k: len(pending[k]))
                group = pending.pop(key)
                held -= len(group)
                if skip:  # replaying up to a resume position
                    skip -= 1
                    continue
                batch = self.decode(key[0], group, skipped, epoch)
                if batch is not None:
                    yield batch
                    skipped = []
        if not self.drop_last:  # end of the stream: what is left, filled up from its own bucket
            for key, group in pending.items():
                if skip:
                    skip -= 1
                    continue
                batch = self.decode(key[0], group, skipped, epoch)
                if batch is not None:
                    yield batch
                    skipped = []

    def chunk_count(self, meta: dict, epoch: int) -> int:
        """SDXL chunks the caption this sample trains on at `epoch` needs (0 without grouping)."""
        if self.chunks is None or CAPTION_KEY not in meta:
            return 0
        key = self.collate.drawn_key(CaptionKey(self.collate.seed, epoch, meta[CAPTION_KEY]))
        return self.chunks(self.collate.captions(self.caption_record(meta), key))

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
        problem = derived_field_problem(meta)
        if problem:
            skipped.append((path, f"json_broken: {problem}"))
            return None
        if SHARD_KEY in raw:
            meta[CAPTION_KEY] = sample_key(raw[SHARD_KEY], raw[POSITION_KEY])
        w, h = int(meta["width"]), int(meta["height"])
        if w * h > self.settings.bomb_pixels:
            skipped.append((path, f"decompression_bomb: {w}x{h} pixels (data.bomb_megapixels)"))
            return None
        if self.settings.keeps(w, h) is not None:
            return None  # filtered by the preprocessing settings, as the folder source does
        if self.require_caption and not has_caption(meta.get("caption"), tags):
            return None
        return meta, data

    def caption_record(self, meta: dict) -> dict:
        """What the caption pipeline reads for a parsed sample (its `captions`): the folder source's record."""
        return shard_caption_record(meta, self.txt_style)

    def decode(self, bucket: int, group: list, skipped: list, epoch: int = 0) -> dict | None:
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
            record = sample_record(self.caption_record(meta), sizes, pixels=to_pixels(pixels), path=meta["path"],
                                   tags=meta["tags"],
                                   rating=meta.get("rating"), score=meta.get("score"), created=meta.get("created"))
            if CAPTION_KEY in meta:  # the caption drawn from (seed, epoch, sample key), not from a global RNG
                record[CAPTION_KEY] = CaptionKey(self.collate.seed, epoch, meta[CAPTION_KEY])
            samples.append(record)
        if not samples:
            return None  # nothing in this group decodes; the stream goes on
        decoded = len(samples)
        samples.extend(samples[i % decoded] for i in range(self.batch_size - decoded))  # fill up from the bucket
        return self.collate(LoadedBatch(samples[:self.batch_size], list(skipped)))


def shard_caption_record(meta: dict, txt_style: str) -> dict:
    """A shard sample's caption record from its JSON metadata (`tags` by category), by the folder source's
    builder: the metadata flattened to the manifest row's columns."""
    row = {c: meta.get(c) for c in CAPTION_FIELDS}
    row.update((f"tags_{c}", list((meta.get("tags") or {}).get(c) or [])) for c in TAG_CATEGORIES)
    return caption_record(row, txt_style)


def derived_field_problem(meta: dict) -> str | None:
    """Why a sample's derived caption fields cannot be used (None when absent or well-formed)."""
    for field in ("rating", "score_tag", "year_tag"):
        if meta.get(field) is not None and not isinstance(meta[field], str):
            return f"{field} must be a string, got {type(meta[field]).__name__}"
    control = meta.get("control_tags")
    if control is not None and not (isinstance(control, list) and all(isinstance(t, str) for t in control)):
        return "control_tags must be a list of strings"
    return None


class ShardStream(IterableDataset):
    """One rank's batches: each DataLoader worker yields exactly `batches_per_worker` per epoch (so every rank
    runs the same number of steps), and the Lightning loop takes them round-robin from the workers."""

    def __init__(self, urls: list[str], batcher: BucketBatcher, *, rank: int, world_size: int,
                 batches_per_worker: int, num_workers: int = 0, shuffle_buffer: int = 1000, resampled: bool = False,
                 seed: int = 0):
        self.urls, self.batcher, self.rank, self.world_size = list(urls), batcher, rank, world_size
        self.batches_per_worker, self.workers = batches_per_worker, max(1, num_workers)
        self.shuffle_buffer, self.resampled, self.seed = shuffle_buffer, resampled, seed
        self.start_epoch, self.start_batch = 0, 0
        self._epochs = 0  # epochs begun by this copy (each worker process counts its own)

    def __len__(self) -> int:
        return self.batches_per_worker * self.workers

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Begin at `epoch` after this rank's first `batches_done` batches of it."""
        self.start_epoch, self.start_batch, self._epochs = epoch, batches_done, 0

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, done = self.start_epoch + self._epochs, 0
        if self._epochs == 0 and self.start_batch:
            # The loader takes batches round-robin starting with its worker 0 in every epoch, and global batch i
            # comes from stream i % workers: in the resumed epoch worker 0 plays the stream whose turn is next.
            worker = (worker + self.start_batch) % workers
            done = self.start_batch // workers + (worker < self.start_batch % workers)  # yielded before the resume
        self._epochs += 1
        batches = self.batcher(self.samples(epoch, worker, workers), epoch=epoch, skip=done)
        return islice(batches, max(0, self.batches_per_worker - done))

    # -- samples ---------------------------------------------------------------------------------------------
    def _rng(self, epoch: int, *parts: int) -> random.Random:
        """A generator for (seed, epoch, parts): the same in every process (no Python hash randomisation)."""
        index = 0
        for part in parts:
            index = (index * 1_000_003 + part + 2) & MASK64
        return random.Random(key_int(CaptionKey(self.seed, epoch, index)))

    def shards_of(self, epoch: int, worker: int, workers: int, pass_: int) -> Iterator[int]:
        """Shard indices this worker reads in one pass: a seeded shuffle of all shards split by rank, then worker
        (or, resampled, shards drawn at random for ever)."""
        if self.resampled:
            rng = self._rng(epoch, self.rank, worker, pass_)
            return (rng.randrange(len(self.urls)) for _ in itertools.count())
        order = list(range(len(self.urls)))
        self._rng(epoch, -1, pass_).shuffle(order)  # the same on every rank and worker: disjoint splits
        return iter(order[self.rank::self.world_size][worker::workers])

    def samples(self, epoch: int, worker: int, workers: int) -> Iterator[dict]:
        """This worker's samples of `epoch`, pass after pass over its shards, through the shuffle buffer; each
        tagged with its shard index and position (its key)."""
        for pass_ in itertools.count():
            produced = False
            rng = self._rng(epoch, self.rank, worker, pass_, 1)
            for sample in self.shuffled(self.read(self.shards_of(epoch, worker, workers, pass_)), rng):
                produced = True
                yield sample
            if not produced:  # no shard of this worker holds a sample: the epoch ends short
                return

    def read(self, shards: Iterable[int]) -> Iterator[dict]:
        for shard in shards:
            yield from read_shard(self.urls[shard], shard)

    def shuffled(self, samples: Iterable[dict], rng: random.Random) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer


class ShardCaptions:
    """Every sample the stream would train on, as (caption key, caption record) in key order, read from the
    shards without decoding an image: the sources of a text-embedding cache (`embedding_cache.keyed`). The
    samples are the ones `batcher.parse` keeps, keyed as `ShardStream` keys them."""

    def __init__(self, urls: list[str], batcher: BucketBatcher):
        self.urls, self.batcher = list(urls), batcher

    def items(self) -> Iterator[tuple[int, dict[str, str]]]:
        for shard, url in enumerate(self.urls):
            for raw in read_shard(url, shard):
                parsed = self.batcher.parse(raw, [])
                if parsed is not None:
                    meta, _ = parsed
                    yield meta[CAPTION_KEY], self.batcher.caption_record(meta)


def per_worker(batches_per_rank: int, num_workers: int) -> int:
    return int(np.ceil(batches_per_rank / max(1, num_workers)))
