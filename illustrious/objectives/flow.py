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


class FlowXPrediction(FlowObjective):
    """Rectified flow with the network predicting the clean image: JiT (Li & He 2025, "Back to Basics: Let
    Denoising Generative Models Denoise", arXiv:2511.13720). The forward process, the sampling times and every
    sampler are flow's; only the parameterization differs: the target is x0.

    JiT's loss is the velocity loss written on the x0 output ("x-prediction, v-loss"): with v = (x_t - x0) / t,
    |v_hat - v|^2 = |x0_hat - x0|^2 / t^2, which is `objective/weighting=velocity` (conf/objective/flow_x0.yaml's
    default); no weighting is the plain x0 loss, min_snr is min(snr, gamma) (Hang et al. 2023's x0 form).

    Why it exists: in pixel space each token carries many pixel values (a 4x4x3 patch = 48), and a velocity or
    noise output must reproduce that much Gaussian noise per token, which a narrow network does badly; clean
    images are low-dimensional, so predicting them is easier (JiT, section 3).
    """

    prediction = "flow_x0"

    def target(self, x0, noise, t):
        return x0

    def to_x0(self, x_t, pred, t):
        return pred

    def to_eps(self, x_t, pred, t):
        # x_t = (1 - t) x0 + t eps; at t = 0 x_t says nothing of the noise (no sampler asks for it there)
        return (x_t - expand_like(1 - t, x_t) * pred) / expand_like(t.clamp(min=torch.finfo(torch.float32).eps), x_t)
