"""What the folder and WebDataset data modules share: preprocessing settings (one `ImageSettings`), buckets, the backbone's pixel multiple,
and counting samples that failed to load (taken out of each batch before it reaches the model)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from illustrious.data.captions import CaptionPipeline
from illustrious.data.images.buckets import BucketSet
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.report import ProblemReport
from illustrious.data.loading.batching import SKIPPED_KEY, Collate, to_float
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)


class BucketedDataModule(L.LightningDataModule):
    def __init__(self, images: ImageSettings | None, batch_size: int, num_workers: int, seed: int,
                 captions: CaptionPipeline | None):
        super().__init__()
        settings = images if images is not None else ImageSettings()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: must be >= 1.")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers}: must be >= 0 (0 loads in the main process).")
        self.settings, self.batch_size, self.num_workers, self.seed = settings, batch_size, num_workers, seed
        self.caption_pipeline = captions or CaptionPipeline(dropout=0.0)
        self.buckets: BucketSet | None = None
        self.skipped = ProblemReport()  # samples that failed to load during training, on this rank
        self._skipped_paths: set[str] = set()

    @classmethod
    def from_config(cls, **keys):
        """Hydra's `_target_`: the flat `data.*` keys, the preprocessing ones (conf/data/images/default.yaml,
        shared by every source) gathered into one `ImageSettings`, so users keep typing `data.min_side=...`."""
        images, rest = ImageSettings.split(keys)
        return cls(images=images, **rest)

    # -- buckets ------------------------------------------------------------------------------------------
    def check_pixel_multiple(self, multiple: int) -> None:
        """Adopt the backbone's pixel multiple for the buckets, or check that the configured one fits it."""
        configured = self.settings.bucket_multiple
        if configured is None:
            self.settings = self.settings.with_multiple(multiple)
        elif configured % multiple:
            raise ConfigError(
                f"data.bucket_multiple={configured} is not a multiple of this backbone's pixel_multiple={multiple} "
                f"(its autoencoder factor x patch size): bucket sides would not divide into latents. Set "
                f"data.bucket_multiple to a multiple of {multiple}, or to null to use {multiple}.")
        low, high = self.settings.bucket_area_range
        self.buckets = BucketSet(low, high, self.settings.bucket_step, self.settings.bucket_multiple,
                                 self.settings.max_aspect)

    def bucket_set(self) -> BucketSet:
        if self.buckets is None:  # used outside train(): take the multiple from the module being fitted
            backbone = getattr(getattr(self.trainer, "lightning_module", None), "backbone", None)
            multiple = getattr(backbone, "pixel_multiple", None) or self.settings.bucket_multiple
            if multiple is None:
                raise ConfigError("data.bucket_multiple is null and no backbone says its pixel_multiple: call "
                                  "check_pixel_multiple(backbone.pixel_multiple) or set data.bucket_multiple.")
            self.check_pixel_multiple(multiple)
        return self.buckets

    def rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # -- samples that failed to load ------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        if isinstance(batch, dict) and SKIPPED_KEY in batch:
            for path, reason in batch.pop(SKIPPED_KEY):
                if path not in self._skipped_paths:
                    self._skipped_paths.add(path)
                    kind, _, detail = reason.partition(": ")
                    self.skipped.add(kind, path, detail)
                    log.warning("Skipped %s (%s); a sample of the same bucket took its place.", path, reason)
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        # Under a trainer, loaders hand over 8-bit pixels and half-precision latents (a quarter or half of
        # the bytes through worker queues, pinned memory and the bus); they become float32 here, on the device.
        return to_float(batch) if isinstance(batch, dict) else batch

    def loader_collate(self) -> Collate:
        """The collate for this module's loaders: compact tensors when a trainer converts them on the device."""
        return Collate(self.caption_pipeline, defer_float=getattr(self, "trainer", None) is not None, seed=self.seed)

    def teardown(self, stage: str) -> None:
        if not len(self.skipped):
            return
        rank, _ = self.rank_and_world()
        out = Path(getattr(self.trainer, "default_root_dir", ".")) / f"data_skipped_rank{rank}.json"
        self.skipped.write(out, rank=rank)
        log.warning("%d samples could not be loaded during training on rank %d (%s); listed in %s",
                    len(self.skipped), rank, self.skipped.summary(), out)

    def largest_image_size(self) -> tuple[int, int]:
        """(height, width) of the largest bucket a batch can come from (the memory check plans for it):
        of the buckets images were assigned to, when the source knows them, else of all buckets."""
        buckets = self.bucket_set()
        ids = getattr(self, "bucket_ids", None)
        candidates = sorted(set(ids.tolist())) if ids is not None and len(ids) else range(len(buckets))
        w, h = max((buckets[i] for i in candidates), key=lambda size: (size[0] * size[1], size))
        return h, w

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) to sample at: the square-most bucket of the top level (subclasses may know better)."""
        w, h = self.bucket_set().most_square()
        return h, w
