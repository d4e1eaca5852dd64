"""`data=webdataset`: streaming tar shards (e.g. written by `python -m illustrious.make_shards`) on a cluster.

Shards are split across ranks (rank and world size from the trainer) and DataLoader workers, or, with
`resampled=true`, drawn at random by each of them; samples are bucketed per sample with a buffer (see
sources/webdataset_stream.py) into the same batch format as `data=folder`. Every rank yields the same number of
batches per epoch (from `index.json`'s sample count, or `batches_per_epoch`), so DDP never waits on a
rank that ran dry. A checkpoint records the stream's position (epoch and batches done on each rank), and a
resumed run continues at the exact batch with the same captions (sources/webdataset_stream.py), provided the
shards, seed, batch size, world size and number of loader workers are unchanged; otherwise the epoch restarts
from its first batch (with a warning).

With `text_cache` the training batches carry cached text embeddings (loading/text_cache.py): K caption variants
per sample keyed by the stream's sample keys, built on first use by reading every training shard's metadata
(no image is decoded), and refused when the shards (URLs, sizes, modification times), the caption settings or
the text encoders differ from those it was built from.

With `group_by_chunks` (SDXL) a training batch holds samples of one aspect bucket and one prompt chunk count
(the chunks its caption of this epoch needs; sources/webdataset_stream.py), so short prompts are not padded to
the longest.

Validation reads held-out shards, named (`val_urls`, taken out of the training list if they are in it) or
the last `val_shards` of the list, in order, without shuffling; rank r takes batches r, r + world, ...
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import warnings
from itertools import islice
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from illustrious.data.captions import CaptionPipeline
from illustrious.data.images.settings import ImageSettings
from illustrious.data.loading.chunk_groups import prompt_chunks_for
from illustrious.data.loading.text_cache import open_text_cache
from illustrious.data.sources.bucketed_datamodule import BucketedDataModule
from illustrious.data.sources.webdataset_stream import (
    BucketBatcher,
    ShardCaptions,
    ShardStream,
    derived_field_problem,
    per_worker,
    read_shard,
    shard_caption_record,
)
from illustrious.data.storage.shard_writer import INDEX
from illustrious.errors import ConfigError, MissingPathError

log = logging.getLogger(__name__)
REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://")
LAYOUT_DEFAULTS = {"group_by_chunks": False}  # layout keys added later: their value in older checkpoints


class HeldOutStream(IterableDataset):
    """The held-out shards in order, each sample keyed by (shard, position) so its caption is the same on every
    pass; batched by `batcher`, and this rank's batches r, r + world, ..."""

    def __init__(self, urls: list[str], batcher: BucketBatcher, rank: int, world_size: int):
        self.urls, self.batcher, self.rank, self.world_size = urls, batcher, rank, world_size

    def samples(self):
        for shard, url in enumerate(self.urls):
            yield from read_shard(url, shard)

    def __iter__(self):
        return islice(self.batcher(self.samples()), self.rank, None, self.world_size)


def shards_digest(urls: list[str]) -> str:
    """A digest of the shard list: each URL, and for local files their size and modification time (a rewritten
    shard is another shard; tar pads members to 512 bytes, so a size alone could miss an edited caption). Remote
    shards are known by their URL only."""
    h = hashlib.blake2b(digest_size=16)
    for url in urls:
        stat = None if url.startswith(REMOTE) else Path(url).expanduser().stat()
        h.update(f"{url}\0{stat.st_size if stat else ''}\0{stat.st_mtime_ns if stat else ''}\n".encode())
    return h.hexdigest()


def expand(spec: str | list[str]) -> list[str]:
    """Shard URLs from a brace pattern or a list."""
    return list(wds.shardlists.expand_urls(spec)) if isinstance(spec, str) else [str(u) for u in spec]


class WebDataModule(BucketedDataModule):
    def __init__(self, urls: str | list[str] | None = None, batches_per_epoch: int | None = None,
                 resampled: bool = False, shuffle_buffer: int = 1000, bucket_buffer: int = 512,
                 require_caption: bool = True, txt_style: str = "tags", images: ImageSettings | None = None,
                 drop_last: bool = False, batch_size: int = 8, num_workers: int = 4, seed: int = 0,
                 captions: CaptionPipeline | None = None, val_urls: str | list[str] | None = None,
                 val_shards: int = 0, text_cache: str | None = None, text_cache_variants: int = 4,
                 group_by_chunks: bool = False):
        super().__init__(images, batch_size, num_workers, seed, captions)
        self.group_by_chunks = group_by_chunks
        self.prompt_chunks = None  # chunk_groups.PromptChunks from the backbone's tokenizers (setup)
        self.text_cache, self.text_cache_variants = text_cache, text_cache_variants
        self.texts = None  # the opened TextEmbeddingCache (setup)
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
        self.stream: ShardStream | None = None
        self._resume_state: dict | None = None

    # -- before any model is built --------------------------------------------------------------------------
    def check(self) -> None:
        if self.urls:
            return
        spec = self.spec
        if isinstance(spec, str) and not spec.startswith(REMOTE) and Path(spec).expanduser().is_dir():
            folder = Path(spec).expanduser()
            index_file = folder / INDEX
            if not index_file.is_file():
                raise MissingPathError(f"data.urls={folder} is a folder without {INDEX}: write shards with python -m "
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
            raise MissingPathError(f"{len(local_missing)} of {len(self.urls)} shards of data.urls do not exist, "
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
            raise MissingPathError(f"{len(missing)} held-out shards do not exist, e.g. {missing[0]} (data.val_urls).")

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
        if self.text_cache and self.texts is None:
            sources = ShardCaptions(self.urls, self.batcher(drop_last=self.drop_last))
            self.texts = open_text_cache(self.text_cache, self.text_cache_variants, self.seed, sources,
                                         self.caption_pipeline, self.data_signature(), self.trainer)
        if self.group_by_chunks and self.prompt_chunks is None:
            self.prompt_chunks = prompt_chunks_for(self.trainer)

    def data_signature(self) -> str:
        """What a text cache's entries depend on besides the captions and encoders: which samples there are (the
        shards, the settings that keep or drop a sample) and how their caption records are read."""
        keep = {k: getattr(self.settings, k) for k in ("min_side", "max_aspect", "bomb_pixels")}
        # records=structured: caption records built by the folder source's builder (categories, derived tags);
        # caches built when the stream read plain caption strings are refused
        return (f"webdataset(records=structured, txt_style={self.txt_style}, "
                f"require_caption={self.require_caption}, {keep}, "
                f"shards={shards_digest(self.urls)})")

    def batcher(self, drop_last: bool, text_cache=None, chunks=None) -> BucketBatcher:
        """Samples -> collated one-bucket batches (with `text_cache`, carrying cached conditioning; with `chunks`,
        one chunk count per batch too)."""
        collate = self.loader_collate()
        collate.text_cache = text_cache
        return BucketBatcher(self.bucket_set(), self.settings, self.batch_size, collate, self.bucket_buffer,
                             self.require_caption, self.txt_style, drop_last, chunks)

    def batches_per_rank(self) -> int:
        _, world = self.rank_and_world()
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return max(1, self.total_samples // (self.batch_size * world))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self.rank_and_world()
        self.check_workers(world)
        batcher = self.batcher(self.drop_last, self.texts, self.prompt_chunks)
        each = per_worker(self.batches_per_rank(), self.num_workers)
        self.stream = ShardStream(self.urls, batcher, rank=rank, world_size=world, batches_per_worker=each,
                                  num_workers=self.num_workers, shuffle_buffer=self.shuffle_buffer,
                                  resampled=self.resampled, seed=self.seed)
        if self._resume_state:
            self.resume(self._resume_state)
        return DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if not self.val_urls:
            return []
        rank, world = self.rank_and_world()
        return DataLoader(HeldOutStream(self.val_urls, self.batcher(drop_last=False), rank, world), batch_size=None,
                          num_workers=0)

    # -- resuming -----------------------------------------------------------------------------------------
    def layout(self) -> dict:
        """What the position means: the same values are needed to continue the epoch exactly."""
        s = self.stream
        return {"seed": self.seed, "batch_size": self.batch_size, "shards": len(self.urls), "world_size": s.world_size,
                "workers": s.workers, "batches_per_worker": s.batches_per_worker, "resampled": self.resampled,
                "shuffle_buffer": self.shuffle_buffer, "group_by_chunks": self.group_by_chunks}

    def stream_state(self, epoch: int, batches_done: int) -> dict:
        """The position after this rank finished `batches_done` batches of `epoch`."""
        if batches_done >= len(self.stream):
            epoch, batches_done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": batches_done, **self.layout()}

    def state_dict(self) -> dict:
        if self.stream is None or self.trainer is None:
            return dict(self._resume_state or {})
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return self.stream_state(self.trainer.current_epoch, progress)

    def load_state_dict(self, state: dict) -> None:
        self._resume_state = dict(state) if state else None
        # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader itself is stateful; the
        # stream restores its own position
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        if self.stream is not None and self._resume_state:
            self.resume(self._resume_state)

    def resume(self, state: dict) -> None:
        epoch, done = int(state.get("epoch", 0)), int(state.get("batches_done", 0))
        # checkpoints from before chunk grouping existed were written without it
        changed = {k: (state.get(k, LAYOUT_DEFAULTS.get(k)), v) for k, v in self.layout().items()
                   if state.get(k, LAYOUT_DEFAULTS.get(k)) != v}
        if changed:
            log.warning("The stream's layout changed since the checkpoint (%s: checkpoint vs now); epoch %d restarts "
                        "from its first batch.", ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), epoch)
            done = 0
        self.stream.resume_at(epoch, done)

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
            if not isinstance(meta, dict) or derived_field_problem(meta):
                continue
            prompt = pick(shard_caption_record(meta, self.txt_style), rng)
            if prompt:
                prompts.append(prompt)
            if len(prompts) == n:
                break
        return prompts
