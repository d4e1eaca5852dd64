"""`data=shapes`: the built-in synthetic set as a LightningDataModule, with held-out prompts for evaluation.

The held-out stream (layouts drawn from another seed) gives the evaluation prompts and, its first
`val_samples` images, the validation set (`val_dataloader`, fixed batches).

Batches come from the bucket batch sampler over one bucket (a shuffle per (seed, epoch), sharded by rank,
whole batches only): its position is saved in checkpoints, so a resumed run continues at the exact batch,
and each sample's caption is drawn from (seed, epoch, index).
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from illustrious.data.captions import CaptionPipeline
from illustrious.data.loading.batching import Collate, LoadedBatch
from illustrious.data.loading.chunk_groups import chunk_counts_for
from illustrious.data.loading.sampler import BucketBatchSampler
from illustrious.data.loading.text_cache import CaptionSources, open_text_cache
from illustrious.data.sources.held_out import validation_batches
from illustrious.data.sources.shapes import Layout, ShapesDataset
from illustrious.errors import ConfigError

HELD_OUT_SEED_OFFSET = 1_000_003  # held-out prompts come from a disjoint stream of layouts


class ShapesDataModule(L.LightningDataModule):
    def __init__(self, width: int = 32, height: int = 32, length: int = 10_000, seed: int = 0, max_shapes: int = 2,
                 batch_size: int = 32, num_workers: int = 0, captions: CaptionPipeline | None = None,
                 text_cache: str | None = None, text_cache_variants: int = 4, group_by_chunks: bool = False,
                 val_samples: int = 64, mixed_order: bool = False):
        super().__init__()
        if val_samples < 0:
            raise ConfigError(f"data.val_samples={val_samples}: must be >= 0 (0 = no validation set).")
        self.val_samples = val_samples
        self.text_cache, self.text_cache_variants = text_cache, text_cache_variants
        self.group_by_chunks = group_by_chunks
        self.dataset = ShapesDataset(length=length, width=width, height=height, seed=seed, max_shapes=max_shapes,
                                     mixed_order=mixed_order)
        self.held_out = ShapesDataset(length=max(length, val_samples), width=width, height=height, seed=seed + HELD_OUT_SEED_OFFSET,
                                      max_shapes=max_shapes, mixed_order=mixed_order)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.collate = Collate(captions, seed=seed)
        self.sampler: BucketBatchSampler | None = None
        self._resume_state: dict | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the training images."""
        return self.dataset.height, self.dataset.width

    def largest_image_size(self) -> tuple[int, int]:
        return self.image_size

    def check_pixel_multiple(self, multiple: int) -> None:
        h, w = self.image_size
        if h % multiple or w % multiple:
            fit_h, fit_w = (max(multiple, side // multiple * multiple) for side in (h, w))
            raise ConfigError(f"data.height={h} and data.width={w} must be multiples of {multiple} for this backbone, "
                              f"e.g. data.height={fit_h} data.width={fit_w}.")

    def caption_sources(self) -> CaptionSources:
        return CaptionSources(len(self.dataset), self.dataset.caption_source)

    def setup(self, stage: str | None = None) -> None:
        if self.text_cache and self.collate.text_cache is None:
            sources = self.caption_sources()
            signature = (f"shapes(seed={self.dataset.seed}, length={self.dataset.length}, max_shapes={self.dataset.max_shapes}"
                         + (", mixed_order=True)" if self.dataset.mixed_order else ")"))
            self.collate.text_cache = open_text_cache(self.text_cache, self.text_cache_variants, self.seed, sources,
                                                      self.collate.captions, signature, self.trainer)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        try:
            counts = (chunk_counts_for(trainer, self.caption_sources(), self.collate.caption)
                      if self.group_by_chunks else None)
            self.sampler = BucketBatchSampler(np.zeros(len(self.dataset), dtype=np.int64), self.batch_size,
                                              seed=self.seed, rank=rank, world_size=world, drop_last=True,
                                              chunk_counts=counts)
        except ValueError as e:
            raise ConfigError(f"{e}: raise data.length or lower data.batch_size.") from None
        if self._resume_state:
            self.sampler.load_state_dict(self._resume_state)
        return DataLoader(IndexedBatches(self.dataset), sampler=self.sampler, batch_size=None,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader | list:
        """The first `val_samples` held-out images in fixed batches (rank r takes batches r, r + world, ...)."""
        if not self.val_samples:
            return []
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = validation_batches(np.zeros(self.val_samples, dtype=np.int64), self.batch_size, rank, world)
        return DataLoader(IndexedBatches(self.held_out), sampler=batches, batch_size=None, num_workers=0,
                          collate_fn=self.collate, generator=torch.Generator())

    # -- resuming -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.sampler is None or self.trainer is None:
            return dict(self._resume_state or {})
        return self.sampler.state_dict(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def load_state_dict(self, state: dict) -> None:
        self._resume_state = dict(state) if state else None
        # the sampler restores the position itself (Lightning's warning is about loaders that cannot)
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        if self.sampler is not None and self._resume_state:
            self.sampler.load_state_dict(self._resume_state)

    def eval_layouts(self, n: int) -> list[Layout]:
        """Layouts of the first `n` held-out samples; their sentences are the evaluation prompts."""
        return [self.held_out.layout(i) for i in range(n)]

    def sample_prompts(self, n: int) -> list[str]:
        return [layout.sentence() for layout in self.eval_layouts(n)]


class IndexedBatches:
    """A map-style dataset of whole batches: the item for a sampler's batch of indices is a `LoadedBatch`
    that carries the batch's epoch and indices (Collate seeds each caption from them)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, indices) -> LoadedBatch:
        epoch = getattr(indices, "epoch", None)
        indices = [int(i) for i in indices]
        return LoadedBatch([self.dataset[i] for i in indices], epoch=epoch,
                           indices=indices if epoch is not None else None)
