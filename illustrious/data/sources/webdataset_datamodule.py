"""`data=webdataset`: streaming tar shards (e.g. written by `python -m illustrious.make_shards`) on a cluster.

Shards are split across ranks (rank and world size from the trainer) and DataLoader workers, or, with
`resampled=true`, drawn at random by each of them; samples are bucketed per sample with a buffer (see
sources/webdataset_stream.py) into the same batch format as `data=folder`. Every rank yields the same number of
batches per epoch (from `index.json`'s sample count, or `batches_per_epoch`), so DDP never waits on a
rank that ran dry. A streamed epoch resumes from its start, not from the exact batch.

Validation reads held-out shards, named (`val_urls`, taken out of the training list if they are in it) or
the last `val_shards` of the list, in order, without shuffling; rank r takes batches r, r + world, ...
"""

from __future__ import annotations

import json
import logging
import random
from functools import partial
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from illustrious.data.captions import CaptionPipeline
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.labels import caption_variants
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.data.sources.bucketed_datamodule import BucketedDataModule
from illustrious.data.sources.webdataset_stream import BucketBatcher, per_worker, split_by_rank, stream
from illustrious.data.storage.shard_writer import INDEX
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)
REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://")


class EpochStream(IterableDataset):
    """The pipeline with a length (batches per rank and epoch), for Lightning's progress and epoch end."""

    def __init__(self, pipeline, length: int):
        self.pipeline, self.length = pipeline, length

    def __iter__(self):
        return iter(self.pipeline)

    def __len__(self) -> int:
        return self.length


class HeldOutStream(IterableDataset):
    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __iter__(self):
        return iter(self.pipeline)


def expand(spec: str | list[str]) -> list[str]:
    """Shard URLs from a brace pattern or a list."""
    return list(wds.shardlists.expand_urls(spec)) if isinstance(spec, str) else [str(u) for u in spec]


class WebDataModule(BucketedDataModule):
    def __init__(self, urls: str | list[str] | None = None, batches_per_epoch: int | None = None,
                 resampled: bool = False, shuffle_buffer: int = 1000, bucket_buffer: int = 512,
                 require_caption: bool = True, txt_style: str = "tags", images: ImageSettings | None = None,
                 drop_last: bool = False, batch_size: int = 8, num_workers: int = 4, seed: int = 0,
                 captions: CaptionPipeline | None = None, val_urls: str | list[str] | None = None,
                 val_shards: int = 0):
        super().__init__(images, batch_size, num_workers, seed, captions)
        if val_shards < 0:
            raise ConfigError(f"data.val_shards={val_shards}: must be >= 0 (0 = no held-out shards).")
        if val_urls and val_shards:
            raise ConfigError("data.val_urls and data.val_shards are both set: name the held-out shards or count them.")
        self.val_spec, self.val_shards = val_urls, val_shards
        self.val_urls: list[str] = []
        if not urls:
            raise ConfigError("data.urls is not set: give the shard folder (with index.json, from make_shards), a "
                              "brace pattern like /data/shards/shard-{000000..000099}.tar, or a list of URLs.")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ConfigError(f"data.batches_per_epoch={batches_per_epoch}: must be >= 1, or null to use index.json.")
        self.spec = urls
        self.batches_per_epoch, self.resampled = batches_per_epoch, resampled
        self.shuffle_buffer, self.bucket_buffer = shuffle_buffer, bucket_buffer
        self.require_caption, self.txt_style, self.drop_last = require_caption, txt_style, drop_last
        self.urls: list[str] = []
        self.total_samples: int | None = None

    # -- before any model is built --------------------------------------------------------------------------
    def check(self) -> None:
        if self.urls:
            return
        spec = self.spec
        if isinstance(spec, str) and not spec.startswith(REMOTE) and Path(spec).expanduser().is_dir():
            folder = Path(spec).expanduser()
            index_file = folder / INDEX
            if not index_file.is_file():
                raise FileNotFoundError(f"data.urls={folder} is a folder without {INDEX}: write shards with python -m "
                                        "illustrious.make_shards, or give the shards as a brace pattern.")
            index = json.loads(index_file.read_text())
            self.urls = [str(folder / s["url"]) for s in index["shards"] if s["count"] > 0]
            self.total_samples = int(index["total"])
            counts = {str(folder / s["url"]): int(s["count"]) for s in index["shards"]}
        else:
            self.urls = expand(spec)
            counts = {}
        self._hold_out_shards(counts)
        local_missing = [u for u in self.urls if not u.startswith(REMOTE) and not Path(u).expanduser().is_file()]
        if local_missing:
            raise FileNotFoundError(f"{len(local_missing)} of {len(self.urls)} shards of data.urls do not exist, "
                                    f"e.g. {local_missing[0]}.")
        if not self.urls or self.total_samples == 0:
            raise ConfigError(f"data.urls={spec} holds no samples.")
        if self.batches_per_epoch is None and self.total_samples is None:
            raise ConfigError("data.batches_per_epoch is null and the shards come without index.json: set "
                              "data.batches_per_epoch (per rank) so every rank runs the same number of steps.")

    def _hold_out_shards(self, counts: dict[str, int]) -> None:
        """Move the held-out shards from the training list to `val_urls` (and their samples out of the count)."""
        if self.val_shards:
            if self.val_shards >= len(self.urls):
                raise ConfigError(f"data.val_shards={self.val_shards} would hold out all {len(self.urls)} shards.")
            self.val_urls = self.urls[-self.val_shards:]
        elif self.val_spec:
            self.val_urls = expand(self.val_spec)
        held = set(self.val_urls)
        self.urls = [u for u in self.urls if u not in held]
        if self.total_samples is not None:
            self.total_samples -= sum(counts.get(u, 0) for u in held)
        missing = [u for u in self.val_urls if not u.startswith(REMOTE) and not Path(u).expanduser().is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} held-out shards do not exist, e.g. {missing[0]} (data.val_urls).")

    def check_workers(self, world_size: int) -> None:
        streams = world_size * max(1, self.num_workers)
        if not self.resampled and len(self.urls) < streams:
            raise ConfigError(
                f"{len(self.urls)} shards cannot feed {world_size} ranks x {max(1, self.num_workers)} workers "
                "(each needs a shard of its own): write more, smaller shards (make_shards shard_size=...), lower "
                "data.num_workers, or set data.resampled=true.")

    # -- on every rank ------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.check()
        self.bucket_set()

    def batches_per_rank(self) -> int:
        _, world = self.rank_and_world()
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return max(1, self.total_samples // (self.batch_size * world))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self.rank_and_world()
        self.check_workers(world)
        batcher = BucketBatcher(self.bucket_set(), self.settings, self.batch_size, self.loader_collate(), self.bucket_buffer,
                                self.require_caption, self.txt_style, self.drop_last)
        workers = max(1, self.num_workers)
        each = per_worker(self.batches_per_rank(), self.num_workers)
        pipeline = stream(self.urls, batcher, rank=rank, world_size=world, batches_per_worker=each,
                          shuffle_buffer=self.shuffle_buffer, resampled=self.resampled, seed=self.seed)
        return DataLoader(EpochStream(pipeline, each * workers), batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if not self.val_urls:
            return []
        rank, world = self.rank_and_world()
        batcher = BucketBatcher(self.bucket_set(), self.settings, self.batch_size, self.loader_collate(),
                                self.bucket_buffer, self.require_caption, self.txt_style, drop_last=False)
        pipeline = wds.DataPipeline(wds.SimpleShardList(self.val_urls), wds.tarfile_to_samples(handler=wds.warn_and_continue),
                                    batcher, partial(split_by_rank, rank=rank, world_size=world))
        return DataLoader(HeldOutStream(pipeline), batch_size=None, num_workers=0)

    def sample_prompts(self, n: int) -> list[str]:
        """Prompts of the first `n` captioned samples of the first shard."""
        self.check()
        pick = CaptionPipeline(self.caption_pipeline.styles, dropout=0.0)
        rng = random.Random(self.seed)
        prompts = []
        for raw in wds.DataPipeline(wds.SimpleShardList(self.urls[:1]), wds.tarfile_to_samples()):
            try:
                meta = json.loads(raw["json"])
            except (KeyError, ValueError):
                continue
            tags = {c: (meta.get("tags") or {}).get(c) or [] for c in TAG_CATEGORIES}
            prompt = pick(caption_variants(meta.get("caption"), tags, self.txt_style), rng)
            if prompt:
                prompts.append(prompt)
            if len(prompts) == n:
                break
        return prompts
