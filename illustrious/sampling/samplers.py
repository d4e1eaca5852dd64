"""Samplers: plain functions over a `denoise(x, t) -> x0` callable (k-diffusion style).

Every objective writes x_t = alpha(t) x0 + sigma(t) eps, so each sampler is written once in terms of
`alpha_sigma` and works for eps, v and flow alike:

- `sample_euler`: the deterministic DDIM step. It is also Euler's method on the probability-flow ODE in
  k-diffusion's variance-exploding form (x / alpha, sigma / alpha) -- diffusers' `EulerDiscreteScheduler` -- and
  Euler on the rectified-flow ODE -- diffusers' `FlowMatchEulerDiscreteScheduler`; the three updates are equal.
- `sample_dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler`
  (algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint"), and in flow
  form as the same scheduler with use_flow_sigmas=True.

`times` decreases and ends at 0; the last step returns the clean estimate (diffusers' final_sigmas_type="zero").
`callback`, if given, receives {"i", "t", "x", "denoised"} after each model evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
AlphaSigma = Callable[[Tensor], tuple[Tensor, Tensor]]


def _scales(alpha_sigma: AlphaSigma, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    alpha, sigma = alpha_sigma(t.reshape(1))
    return alpha.to(x.dtype).squeeze(), sigma.to(x.dtype).squeeze()


def _denoise(denoise: Denoiser, x: Tensor, t: Tensor, i: int, callback) -> Tensor:
    x0 = denoise(x, t)
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x0


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: Tensor, times: Tensor, alpha_sigma: AlphaSigma, callback=None) -> Tensor:
    """DDIM (eta = 0) / Euler: keep the noise the clean estimate implies, move it from t to the next t."""
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x0 = _denoise(denoise, x, t, i, callback)
        if t_next <= 0:
            return x0
        alpha, sigma = _scales(alpha_sigma, t, x)
        alpha_next, sigma_next = _scales(alpha_sigma, t_next, x)
        eps = (x - alpha * x0) / sigma
        x = alpha_next * x0 + sigma_next * eps
    return x


def _log_snr_half(alpha: Tensor, sigma: Tensor) -> Tensor:
    """lambda = log(alpha / sigma); -inf at zero SNR, where the first-order step below is still exact."""
    return torch.log(alpha) - torch.log(sigma)


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: Tensor, times: Tensor, alpha_sigma: AlphaSigma, callback=None) -> Tensor:
    """DPM-Solver++(2M), multistep second order in log-SNR (diffusers' midpoint form).

    The first step is first order (no history yet) and the step to t = 0 returns the clean estimate, as in
    diffusers (final_sigmas_type="zero") and k-diffusion's `sample_dpmpp_2m`.
    """
    steps = len(times) - 1
    previous = None  # (x0, lambda) of the last step
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        x0 = _denoise(denoise, x, t, i, callback)
        if t_next <= 0:
            return x0
        alpha, sigma = _scales(alpha_sigma, t, x)
        alpha_next, sigma_next = _scales(alpha_sigma, t_next, x)
        lam, lam_next = _log_snr_half(alpha, sigma), _log_snr_half(alpha_next, sigma_next)
        h = lam_next - lam
        if previous is None:
            d = x0
        else:
            x0_prev, lam_prev = previous
            r = (lam - lam_prev) / h
            d = x0 + 0.5 * (x0 - x0_prev) / r  # an infinite r (a step from zero SNR) leaves the first-order term
        x = (sigma_next / sigma) * x - alpha_next * torch.expm1(-h) * d
        previous = (x0, lam)
    return x


SAMPLERS: dict[str, Callable] = {"euler": sample_euler, "ddim": sample_euler, "dpmpp_2m": sample_dpmpp_2m}
