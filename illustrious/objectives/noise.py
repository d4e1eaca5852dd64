"""Noise samplers: the noise a training target is built from."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianNoise(nn.Module):
    """Standard Gaussian noise."""

    def forward(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def perturb(self, noise: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return noise
