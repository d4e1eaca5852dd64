"""Samplers: plain functions over a `denoise(x, t) -> x0` callable (k-diffusion style).

Every objective writes x_t = alpha(t) x0 + sigma(t) eps, so one update serves all of them:
the deterministic DDIM step, which is also Euler's method for rectified flow and for the
k-diffusion (VE) form of a VP model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
AlphaSigma = Callable[[Tensor], tuple[Tensor, Tensor]]


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: Tensor, times: Tensor, alpha_sigma: AlphaSigma, callback=None) -> Tensor:
    """DDIM (eta = 0) / Euler: move the clean estimate's implied noise from t to the next t.

    `times` decreases and ends at 0, where the last clean estimate is returned.
    """
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x0 = denoise(x, t)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
        if t_next <= 0:
            return x0
        alpha, sigma = alpha_sigma(t.reshape(1))
        alpha_next, sigma_next = alpha_sigma(t_next.reshape(1))
        eps = (x - alpha * x0) / sigma
        x = alpha_next * x0 + sigma_next * eps
    return x


SAMPLERS: dict[str, Callable] = {"euler": sample_euler, "ddim": sample_euler}
