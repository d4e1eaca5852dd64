"""Rectified flow (SD3 / Flux / Lumina-2 / bigASP v2.5): x_t = (1 - t) x0 + t noise, target noise - x0."""

from __future__ import annotations

import torch
from torch import Tensor

from illustrious.objectives.base import Objective, expand_like
from illustrious.objectives.timesteps import shift_time


class FlowObjective(Objective):
    prediction = "flow"

    def __init__(self, **components):
        super().__init__(**components)
        self.check_components()

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t

    def sampling_times(self, steps: int, shift: float | None = None) -> Tensor:
        """Uniform times from 1 to 0, optionally shifted towards noise (inference shift, as SD3 / Lumina-2 use)."""
        if steps < 1:
            raise ValueError(f"sampling.steps={steps}: must be >= 1.")
        if shift is not None and shift <= 0:
            raise ValueError(f"sampling.shift={shift}: must be > 0 (1 = no shift).")
        # the sigmas Flux / Lumina-2 / SD3 pipelines pass: linspace(1, 1/steps, steps), then 0
        t = torch.linspace(1, 0, steps + 1)
        return shift_time(t, shift) if shift else t

    def target(self, x0, noise, t):
        return noise - x0

    def to_x0(self, x_t, pred, t):
        return x_t - expand_like(t, x_t) * pred

    def to_eps(self, x_t, pred, t):
        return x_t + expand_like(1 - t, x_t) * pred
