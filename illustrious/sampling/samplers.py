"""Samplers: plain functions over a `denoise(x, t) -> x0` callable (k-diffusion style).

Every objective writes x_t = alpha(t) x0 + sigma(t) eps, so each sampler is written once in terms of
`alpha_sigma` and works for eps, v and flow alike:

- `sample_euler`: the deterministic DDIM step. It is also Euler's method on the probability-flow ODE in
  k-diffusion's variance-exploding form (x / alpha, sigma / alpha) -- diffusers' `EulerDiscreteScheduler` -- and
  Euler on the rectified-flow ODE -- diffusers' `FlowMatchEulerDiscreteScheduler`; the three updates are equal.
- `sample_dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler`
  (algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint"), and in flow
  form as the same scheduler with use_flow_sigmas=True.
- `sample_euler_ancestral` (stochastic): the ancestral step, i.e. a draw from the Gaussian posterior
  q(x_s | x_t, x0 = denoised) (DDPM, DDIM with eta = 1). In k-diffusion's VE form it is diffusers'
  `EulerAncestralDiscreteScheduler` (sigma_up, sigma_down); written over `alpha_sigma` it applies unchanged to flow.
  The Illustrious paper samples with it (appendix B.2: Euler A, more than 20 steps, CFG 5-7.5).
- `sample_dpmpp_2m_sde` (stochastic): DPM-Solver++(2M) SDE, diffusers' `DPMSolverMultistepScheduler`
  (algorithm_type="sde-dpmsolver++", solver_order=2, midpoint), flow included (use_flow_sigmas=True).

Stochastic samplers take `generator`: one `torch.Generator`, or one per image (a list, as diffusers accepts), so
an image's noise depends only on its own generator. They draw one noise tensor per step that does not end at 0,
in the order diffusers' schedulers draw theirs, so the same generator gives the same samples as diffusers.

`times` decreases and ends at 0; the last step returns the clean estimate (diffusers' final_sigmas_type="zero").
`callback`, if given, receives {"i", "t", "x", "denoised"} after each model evaluation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
AlphaSigma = Callable[[Tensor], tuple[Tensor, Tensor]]
Generators = torch.Generator | Sequence[torch.Generator] | None


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


def _multistep_estimate(x0: Tensor, lam: Tensor, h: Tensor, previous: tuple[Tensor, Tensor] | None) -> Tensor:
    """DPM-Solver++(2M)'s clean estimate D: the current one on the first step, else the midpoint extrapolation
    D0 + (D0 - D1) / (2 r) with r = (lambda_t - lambda_prev) / h (an infinite r, a step from zero SNR, leaves D0)."""
    if previous is None:
        return x0
    x0_prev, lam_prev = previous
    return x0 + 0.5 * (x0 - x0_prev) / ((lam - lam_prev) / h)


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
        d = _multistep_estimate(x0, lam, h, previous)
        x = (sigma_next / sigma) * x - alpha_next * torch.expm1(-h) * d
        previous = (x0, lam)
    return x


def step_noise(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x, drawn in float32 on the generator's device (diffusers' `randn_tensor`):
    with a list of generators, row i comes from generator i."""
    if isinstance(generator, Sequence):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}: give one per image.")
        rows = [torch.randn((1, *x.shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.cat(rows).to(x.device, x.dtype)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x: Tensor, times: Tensor, alpha_sigma: AlphaSigma, callback=None,
                           generator: Generators = None) -> Tensor:
    """Euler ancestral: x_s = alpha_s x0 + sigma_s (sqrt(r) eps + sqrt(1 - r) z), r = SNR(t) / SNR(s), z ~ N(0, I).

    eps is the noise the clean estimate implies. This is the posterior q(x_s | x_t, x0); in VE form
    (x / alpha, sigma / alpha) its mean is k-diffusion's Euler step to sigma_down and its spread sigma_up, as in
    diffusers' `EulerAncestralDiscreteScheduler`. Written with SNR ratios it needs no division by alpha_t, so it
    starts from zero SNR (flow, zero-terminal-SNR v-pred: r = 0, a fresh draw around the first estimate).
    """
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x0 = _denoise(denoise, x, t, i, callback)
        if t_next <= 0:
            return x0
        alpha, sigma = _scales(alpha_sigma, t, x)
        alpha_next, sigma_next = _scales(alpha_sigma, t_next, x)
        root_r = (sigma_next * alpha) / (alpha_next * sigma)  # sqrt(SNR(t) / SNR(t_next)), in [0, 1]
        eps = (x - alpha * x0) / sigma
        x = alpha_next * x0 + sigma_next * (root_r * eps + (1 - root_r**2).clamp(min=0).sqrt() * step_noise(x, generator))
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoiser, x: Tensor, times: Tensor, alpha_sigma: AlphaSigma, callback=None,
                        generator: Generators = None) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, section 5; diffusers' "sde-dpmsolver++", midpoint):

        x_s = (sigma_s / sigma_t) e^-h x + alpha_s (1 - e^-2h) D + sigma_s sqrt(1 - e^-2h) z,   h = lambda_s - lambda_t

    with D the clean estimate (first step) or its midpoint extrapolation D0 + (D0 - D1) / (2 r), as in
    `sample_dpmpp_2m`; the step to t = 0 returns the clean estimate.
    """
    previous = None  # (x0, lambda) of the last step
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x0 = _denoise(denoise, x, t, i, callback)
        if t_next <= 0:
            return x0
        alpha, sigma = _scales(alpha_sigma, t, x)
        alpha_next, sigma_next = _scales(alpha_sigma, t_next, x)
        lam, lam_next = _log_snr_half(alpha, sigma), _log_snr_half(alpha_next, sigma_next)
        h = lam_next - lam
        d = _multistep_estimate(x0, lam, h, previous)
        decay = -torch.expm1(-2 * h)  # 1 - e^-2h
        x = (sigma_next / sigma) * torch.exp(-h) * x + alpha_next * decay * d \
            + sigma_next * decay.sqrt() * step_noise(x, generator)
        previous = (x0, lam)
    return x


SAMPLERS: dict[str, Callable] = {"euler": sample_euler, "ddim": sample_euler, "dpmpp_2m": sample_dpmpp_2m,
                                 "euler_ancestral": sample_euler_ancestral, "dpmpp_2m_sde": sample_dpmpp_2m_sde}
# samplers that draw noise while they step: they take `generator=` (the others are deterministic given x)
STOCHASTIC_SAMPLERS = frozenset(name for name, fn in SAMPLERS.items()
                                if "generator" in inspect.signature(fn).parameters)
