"""The six image statistics behind Illustrious 3.5's control tokens, averaged over generated images.

Contrast, brightness, sharpness, dynamic colours, colourfulness (Hasler & Suesstrunk 2003) and saturation,
each exactly as `illustrious.data.captions.image_stats.image_statistics` measures them for the caption
control tokens (one definition): a run trained with those tokens can show whether prompting "high contrast"
raises the contrast of what it draws. Reported as the mean of each statistic over images (0-255 scales,
dynamic colours in bits), plus `saturation_spread`, the mean per-image standard deviation of saturation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from illustrious.data.captions.image_stats import STATISTICS, image_statistics
from illustrious.eval.metrics.images import as_hwc_numpy

COLUMNS = (*STATISTICS, "saturation_spread")


class ColourStatistics(Metric):
    """Sums of the per-image statistics over batches (and processes); `compute()` returns their means."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sums", torch.zeros(len(COLUMNS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        rows = [image_statistics(image) for image in as_hwc_numpy(images)]
        values = torch.tensor([[row[c] for c in COLUMNS] for row in rows], dtype=torch.float64)
        self.sums += values.sum(0).to(self.sums.device)
        self.count += len(rows)

    def compute(self) -> dict[str, Tensor]:
        means = self.sums / self.count.clamp(min=1)
        return {name: means[i] for i, name in enumerate(COLUMNS)}
