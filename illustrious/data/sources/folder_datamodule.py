"""`data=folder`: your own images, from a folder on one machine, in aspect-ratio buckets.

check()            (train() calls it before any model is built) scans the folder or reuses its manifest,
                   applies the preprocessing filters and stops with a clear message if nothing is left.
setup()            on every rank: agrees with rank 0 on the manifest, assigns buckets, and with
                   `latent_cache` checks the cache made for this run's autoencoder covers every image.
train_dataloader() one bucket per batch through `BucketBatchSampler`; its position is saved in
                   checkpoints (`state_dict`) so a resumed run continues at the exact batch.
val_dataloader()   the held-out images (`val_fraction` or `val_count`, chosen by a stable hash of each image's
                   path, see sources/held_out.py; left out of training) in fixed batches.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from illustrious.data.captions import CaptionPipeline
from illustrious.data.captions.annotations import annotations_path, join_annotations, read_annotations
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.labels import caption_variants
from illustrious.data.index.manifest import (
    Manifest,
    default_location,
    load_or_scan,
    read_manifest,
    report_path,
)
from illustrious.data.index.report import ProblemReport
from illustrious.data.index.selection import Selection, select
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.data.loading.chunk_groups import chunk_counts_for
from illustrious.data.loading.sampler import BucketBatchSampler
from illustrious.data.loading.text_cache import CaptionSources, open_text_cache, table_digest
from illustrious.data.sources.bucketed_datamodule import BucketedDataModule
from illustrious.data.sources.folder_dataset import BucketBatches, FolderSamples
from illustrious.data.sources.held_out import check_split, held_out_mask, validation_batches
from illustrious.data.storage.latent_cache import LatentCache, open_latent_cache, stamp
from illustrious.errors import ConfigError, MissingPathError

log = logging.getLogger(__name__)

TXT_STYLES = ("tags", "sentence")


class FolderDataModule(BucketedDataModule):
    def __init__(self, root: str | None = None, manifest: str | None = None, rescan: bool = False,
                 scan_workers: int = 8, require_caption: bool = True, txt_style: str = "tags",
                 images: ImageSettings | None = None, drop_last: bool = False, latent_cache: str | None = None,
                 batch_size: int = 8, num_workers: int = 4, seed: int = 0, captions: CaptionPipeline | None = None,
                 text_cache: str | None = None, text_cache_variants: int = 4, group_by_chunks: bool = False,
                 val_fraction: float = 0.0, val_count: int = 0):
        super().__init__(images, batch_size, num_workers, seed, captions)
        check_split(val_fraction, val_count)
        self.val_fraction, self.val_count = val_fraction, val_count
        self.text_cache, self.text_cache_variants = text_cache, text_cache_variants
        self.group_by_chunks = group_by_chunks
        self.texts = None  # the opened TextEmbeddingCache (setup)
        if root is None or str(root).strip() == "":
            raise ConfigError("data.root is not set: point it at your image folder, e.g. data.root=/data/anime")
        if txt_style not in TXT_STYLES:
            raise ConfigError(f"data.txt_style={txt_style!r}: must be one of {', '.join(TXT_STYLES)} (the caption "
                              "style a .txt holds: comma-separated tags, or a sentence).")
        if scan_workers < 1:
            raise ConfigError(f"data.scan_workers={scan_workers}: must be >= 1.")
        if latent_cache and self.settings.crop == "random":
            raise ConfigError("data.crop=random cannot be used with data.latent_cache: a cached latent holds one "
                              "crop. Set data.crop=center (or train from pixels without the cache).")
        self.root = Path(root).expanduser()
        self.manifest_path = Path(manifest).expanduser() if manifest else None
        self.rescan, self.scan_workers = rescan, scan_workers
        self.require_caption, self.txt_style, self.drop_last = require_caption, txt_style, drop_last
        self.latent_cache = Path(latent_cache).expanduser() if latent_cache else None
        self.manifest: Manifest | None = None
        self.scan_report = ProblemReport()
        self.selection: Selection | None = None
        self.bucket_ids: np.ndarray | None = None
        self.latents: LatentCache | None = None
        self.sampler: BucketBatchSampler | None = None
        self._resume_state: dict | None = None
        self.val_table = None  # the held-out rows, once setup() has split them off the selection
        self.val_bucket_ids: np.ndarray | None = None

    # -- before any model is built --------------------------------------------------------------------------
    def check(self) -> None:
        """Scan or reuse the manifest and select the training images; raise if there are none."""
        if self.selection is not None:
            return
        if not self.root.exists():
            raise MissingPathError(f"data.root={self.root} does not exist. Point it at your image folder.")
        if not self.root.is_dir():
            raise ConfigError(f"data.root={self.root} is a file, not a folder of images.")
        if self.latent_cache is not None and not self.latent_cache.is_dir():
            raise MissingPathError(
                f"data.latent_cache={self.latent_cache} does not exist. Make it first: python -m "
                f"illustrious.cache_latents backbone=<the same backbone> data=folder data.root={self.root} "
                f"data.latent_cache={self.latent_cache}")
        self.manifest_path = self.manifest_path or default_location(self.root)
        self.manifest, self.scan_report, _ = load_or_scan(self.root, self.manifest_path, rescan=self.rescan,
                                                          workers=self.scan_workers)
        self._select()

    def _select(self) -> None:
        if not len(self.manifest):
            raise ConfigError(f"No readable images under data.root={self.root} ({self.scan_report.summary()}). "
                              f"Problems are listed in {report_path(self.manifest_path)}.")
        self.selection = select(self.manifest, self.settings, self.require_caption)
        # derived caption tags of `python -m illustrious.annotate`, where annotated (null elsewhere)
        self.selection.table = join_annotations(self.selection.table,
                                                read_annotations(annotations_path(self.manifest_path)))
        dropped = self.selection.dropped
        log.info("Data: %d of %d images train%s; scan problems: %s.", len(self.selection), len(self.manifest),
                 f" ({dropped.summary()} left out)" if len(dropped) else "", self.scan_report.summary())
        if not len(self.selection):
            raise ConfigError(
                f"All {len(self.manifest)} images under {self.root} were left out: {dropped.summary()}. Check "
                f"data.min_side={self.settings.min_side}, data.max_aspect={self.settings.max_aspect} and "
                f"data.require_caption={self.require_caption} (images need a .txt or tags in a .json).")

    def prepare_data(self) -> None:  # Lightning: once per node, before setup
        self.check()

    # -- on every rank ------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.check()
        self._agree_with_rank_zero()
        self.bucket_set()
        if self.latent_cache is not None and self.latents is None:
            self._attach_latent_cache()
        self._split_held_out()
        self.assign_buckets()
        if self.text_cache and self.texts is None:
            samples = self.samples(latents=False)
            columns = [c for c in self.selection.table.column_names if c == "path" or c.startswith("tags_")
                       or c in ("caption", "rating", "score_tag", "year_tag", "control_tags")]
            signature = f"folder(txt_style={self.txt_style}, rows={table_digest(self.selection.table, columns)})"
            self.texts = open_text_cache(self.text_cache, self.text_cache_variants, self.seed,
                                         CaptionSources(len(samples), samples.caption_source), self.caption_pipeline,
                                         signature, self.trainer)

    def _split_held_out(self) -> None:
        """Take the held-out images out of the training selection (once; the commands that read the whole
        selection -- make_shards, cache_latents -- never call setup)."""
        if self.val_table is not None:
            return
        table = self.selection.table
        held = held_out_mask(table.column("path").to_pylist(), self.val_fraction, self.val_count)
        if held.all():
            raise ConfigError(f"data.val_fraction={self.val_fraction} holds out all {len(held)} images: lower it.")
        self.val_table, self.selection.table = table.filter(held), table.filter(~held)
        self.val_bucket_ids = self.bucket_set().assign(self.val_table.column("width").to_numpy(),
                                                       self.val_table.column("height").to_numpy(),
                                                       self.settings.max_pixels)
        if len(self.val_table):
            log.info("Data: %d images held out for validation.", len(self.val_table))

    def assign_buckets(self) -> None:
        table = self.selection.table
        self.bucket_ids = self.bucket_set().assign(table.column("width").to_numpy(), table.column("height").to_numpy(),
                                                   self.settings.max_pixels)

    def _agree_with_rank_zero(self) -> None:
        """Every rank must train on the same manifest, or the sampler's shards overlap; a rank that read
        an older one (while rank 0 was still scanning) reads the new one again."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return
        expected = trainer.strategy.broadcast(self.manifest.signature, src=0)
        if expected != self.manifest.signature:
            manifest = read_manifest(self.manifest_path)
            if manifest is None or manifest.signature != expected:
                raise RuntimeError(f"Rank {trainer.global_rank} cannot read the manifest rank 0 wrote at "
                                   f"{self.manifest_path}: is it on a file system every node sees?")
            self.manifest, self.selection = manifest, None
            self._select()

    def _attach_latent_cache(self) -> None:
        backbone = getattr(getattr(self.trainer, "lightning_module", None), "backbone", None)
        if backbone is None:
            raise ConfigError("data.latent_cache needs the module's backbone to find the cache made for its "
                              "autoencoder; this module has no `backbone`.")
        self.latents = open_latent_cache(self.latent_cache, backbone.autoencoder, self.settings)
        table = self.selection.table
        stamps = [stamp(s, m) for s, m in zip(table.column("file_size").to_pylist(), table.column("mtime_ns").to_pylist(), strict=True)]
        paths = table.column("path").to_pylist()
        failed = [p for p, s in zip(paths, stamps, strict=True) if self.latents.failed_for(p, s)]
        missing = [p for p, s in zip(paths, stamps, strict=True) if not self.latents.has(p, s) and not self.latents.failed_for(p, s)]
        if missing:
            raise ConfigError(
                f"{len(missing)} of {len(paths)} images are not in the latent cache {self.latents.folder} (new or "
                f"changed since it was made; first: {missing[0]}). Run python -m illustrious.cache_latents with the "
                "same backbone and data settings again: it encodes only those.")
        if failed:
            keep = np.array([p not in set(failed) for p in paths])
            for p in failed:
                self.selection.dropped.add("decode_failed", p, self.latents.failed[p]["detail"])
            self.selection.table = table.filter(keep)
            log.warning("%d images failed to decode when the cache was made and are left out.", len(failed))
        log.info("Training from cached latents in %s (%d images).", self.latents.folder, len(self.selection))

    # -- loading ------------------------------------------------------------------------------------------
    def samples(self, latents: bool = True) -> FolderSamples:
        buckets = self.bucket_set()
        sizes = np.array(buckets.sizes)[self.bucket_ids]
        return FolderSamples(self.root, self.selection.table, sizes, self.settings, self.txt_style,
                             self.latents if latents else None)

    def train_dataloader(self) -> DataLoader:
        if self.bucket_ids is None:
            self.setup("fit")
        rank, world = self.rank_and_world()
        collate = self.loader_collate()
        collate.text_cache = self.texts
        counts = None
        if self.group_by_chunks:
            samples = self.samples(latents=False)
            counts = chunk_counts_for(self.trainer, CaptionSources(len(samples), samples.caption_source),
                                      collate.caption)
        try:
            self.sampler = BucketBatchSampler(self.bucket_ids, self.batch_size, seed=self.seed, rank=rank,
                                              world_size=world, drop_last=self.drop_last, chunk_counts=counts)
        except ValueError as e:
            raise ConfigError(f"{e}: lower data.batch_size or set data.drop_last=false.") from None
        if self._resume_state:
            self.sampler.load_state_dict(self._resume_state)
        dataset = BucketBatches(self.samples(), self.sampler.members, self.bucket_ids, seed=self.seed)
        return DataLoader(dataset, sampler=self.sampler, batch_size=None, collate_fn=collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if self.val_table is None:
            self.setup("validate")
        if not len(self.val_table):
            return []
        rank, world = self.rank_and_world()
        batches = validation_batches(self.val_bucket_ids, self.batch_size, rank, world)
        sizes = np.array(self.bucket_set().sizes)[self.val_bucket_ids]
        samples = FolderSamples(self.root, self.val_table, sizes, self.settings, self.txt_style, self.latents)
        members = {int(b): np.flatnonzero(self.val_bucket_ids == b) for b in np.unique(self.val_bucket_ids)}
        dataset = BucketBatches(samples, members, self.val_bucket_ids, seed=self.seed)
        return DataLoader(dataset, sampler=batches, batch_size=None, collate_fn=self.loader_collate(),
                          num_workers=min(self.num_workers, len(batches)), generator=torch.Generator(),
                          pin_memory=torch.cuda.is_available())

    # -- resuming -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.sampler is None:
            return dict(self._resume_state or {})
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0
        return self.sampler.state_dict(progress)

    def load_state_dict(self, state: dict) -> None:
        self._resume_state = dict(state) if state else None
        # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader itself is stateful;
        # this data module restores the sampler's position itself, so the warning does not apply.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        if self.sampler is not None and self._resume_state:
            self.sampler.load_state_dict(self._resume_state)

    # -- for samples and evaluation -----------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the most populated bucket: the size samples are drawn at."""
        if self.bucket_ids is None:  # (not setup(): that talks to the other ranks, and this may run on one)
            self.check()
            self.assign_buckets()
        w, h = self.bucket_set()[Counter(self.bucket_ids.tolist()).most_common(1)[0][0]]
        return h, w

    def sample_prompts(self, n: int) -> list[str]:
        """Prompts of `n` training images spread over the data set (the same ones every time)."""
        self.check()
        table = self.selection.table
        order = np.random.default_rng(self.seed).permutation(table.num_rows)
        pick = CaptionPipeline(self.caption_pipeline.styles, dropout=0.0)
        rng = random.Random(self.seed)
        prompts = []
        for i in order:
            row = table.slice(int(i), 1).to_pylist()[0]
            prompt = pick(caption_variants(row["caption"], {c: row[f"tags_{c}"] or [] for c in TAG_CATEGORIES},
                                           self.txt_style), rng)
            if prompt:
                prompts.append(prompt)
            if len(prompts) == n:
                break
        return prompts

