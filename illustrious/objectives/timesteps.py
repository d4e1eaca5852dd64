"""Samplers of training times t in [0, 1] (0 = clean, 1 = noise)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def shift_time(t: Tensor, shift: float | Tensor) -> Tensor:
    """SD3's timestep shift: t' = s t / (1 + (s - 1) t); s > 1 moves mass towards noise."""
    return shift * t / (1 + (shift - 1) * t)


class TimestepSampler(nn.Module):
    """Draws u in [0, 1] from a base density, then applies an optional fixed shift."""

    def __init__(self, shift: float | None = None):
        super().__init__()
        if shift is not None and shift <= 0:
            raise ValueError(f"timestep shift must be > 0, got {shift}")
        self.shift = shift

    def base(self, n: int, generator, device) -> Tensor:
        raise NotImplementedError

    def forward(self, n: int, *, generator: torch.Generator | None = None, image_seq_len: int | None = None,
                device: torch.device | str | None = None) -> Tensor:
        t = self.base(n, generator, device)
        if self.shift is not None:
            t = shift_time(t, self.shift)
        return t


class Uniform(TimestepSampler):
    def base(self, n, generator, device):
        return torch.rand(n, generator=generator, device=device)


class LogitNormal(TimestepSampler):
    """t = sigmoid(mean + std * z) (SD3 / Flux)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, shift: float | None = None):
        super().__init__(shift)
        self.mean, self.std = mean, std

    def base(self, n, generator, device):
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * z)
