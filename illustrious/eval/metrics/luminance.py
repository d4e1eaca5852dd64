"""Mean luminance and dynamic range: how far a model reaches towards black and white.

An eps-prediction model on a schedule whose last step keeps signal (SDXL's) cannot move an image's mean far
from mid-grey: the brightness limit of eps seeds that zero-terminal-SNR v-prediction and flow lift. These
figures show it. Luminance is Rec. 601 luma (the weights of the control tokens' brightness) scaled to
[0, 1]; per image we take its mean and its dynamic range, the spread between its 1st and 99th luma
percentiles (robust to a few stray pixels). Reported over all images:

- `mean`: the mean of per-image mean luminance;
- `darkest` / `brightest`: the lowest and highest per-image mean luminance (the reach of the model);
- `dynamic_range`: the mean of per-image p99 - p1 luma spreads.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from illustrious.eval.metrics.images import as_uint8

LUMA = (0.299, 0.587, 0.114)  # Rec. 601, as image_stats' brightness
LOW, HIGH = 0.01, 0.99


def luma(images: Tensor) -> Tensor:
    """(N, 3, H, W) uint8 or [-1, 1] pixels -> (N, H, W) luma in [0, 1] (float64)."""
    x = as_uint8(images).double() / 255.0
    weights = torch.tensor(LUMA, dtype=torch.float64, device=x.device)
    return torch.einsum("nchw,c->nhw", x, weights)


def per_image(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image mean luminance and p99 - p1 dynamic range, both (N,)."""
    y = luma(images).flatten(1)
    spread = torch.quantile(y, torch.tensor([LOW, HIGH], dtype=y.dtype, device=y.device), dim=1)
    return y.mean(1), spread[1] - spread[0]


class Luminance(Metric):
    """Accumulates per-image luminance over batches (and processes); `compute()` returns the four figures."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("mean_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("range_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("darkest", torch.tensor(float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("brightest", torch.tensor(float("-inf"), dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        means, ranges = per_image(images)
        self.mean_sum += means.sum()
        self.range_sum += ranges.sum()
        self.darkest = torch.minimum(self.darkest, means.min())
        self.brightest = torch.maximum(self.brightest, means.max())
        self.count += len(means)

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        return {"mean": self.mean_sum / n, "darkest": self.darkest, "brightest": self.brightest,
                "dynamic_range": self.range_sum / n}
