"""`data=shapes`: the built-in synthetic set as a LightningDataModule, with held-out prompts for evaluation."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from illustrious.data.captions import CaptionPipeline
from illustrious.data.loading.batching import Collate
from illustrious.data.sources.shapes import Layout, ShapesDataset

HELD_OUT_SEED_OFFSET = 1_000_003  # held-out prompts come from a disjoint stream of layouts


class ShapesDataModule(L.LightningDataModule):
    def __init__(self, width: int = 32, height: int = 32, length: int = 10_000, seed: int = 0, max_shapes: int = 2,
                 batch_size: int = 32, num_workers: int = 0, captions: CaptionPipeline | None = None):
        super().__init__()
        self.dataset = ShapesDataset(length=length, width=width, height=height, seed=seed, max_shapes=max_shapes)
        self.held_out = ShapesDataset(length=length, width=width, height=height, seed=seed + HELD_OUT_SEED_OFFSET,
                                      max_shapes=max_shapes)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.collate = Collate(captions)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the training images."""
        return self.dataset.height, self.dataset.width

    def check_pixel_multiple(self, multiple: int) -> None:
        h, w = self.image_size
        if h % multiple or w % multiple:
            raise ValueError(f"data.height={h} and data.width={w} must be multiples of {multiple} for this backbone.")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=self.collate)

    def eval_layouts(self, n: int) -> list[Layout]:
        """Layouts of the first `n` held-out samples; their sentences are the evaluation prompts."""
        return [self.held_out.layout(i) for i in range(n)]

    def sample_prompts(self, n: int) -> list[str]:
        return [layout.sentence() for layout in self.eval_layouts(n)]
