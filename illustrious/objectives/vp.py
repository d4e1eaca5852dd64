"""Discrete variance-preserving schedule (DDPM) shared by the eps and v objectives.

The schedule is taken from diffusers' `DDPMScheduler`, so `add_noise` and the v target match
`DDPMScheduler.add_noise` / `get_velocity` exactly, zero-terminal-SNR rescaling included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from illustrious.objectives.base import Objective, expand_like


class DiscreteVPObjective(Objective):
    """`t = k / num_train_timesteps`, k in 0..N-1; alpha = sqrt(alphas_cumprod[k])."""

    def __init__(
        self,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        **components,
    ):
        super().__init__(**components)
        from diffusers import DDPMScheduler

        reference = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            rescale_betas_zero_snr=zero_terminal_snr,
        )
        self.num_train_timesteps = num_train_timesteps
        self.zero_terminal_snr = zero_terminal_snr
        self.register_buffer("alphas_cumprod", reference.alphas_cumprod.clone().float(), persistent=False)
        self.check_components()

    def index(self, t: Tensor) -> Tensor:
        """Discrete step k for time t (t = k / N)."""
        k = torch.round(t.float() * self.num_train_timesteps).long()
        return k.clamp(0, self.num_train_timesteps - 1)

    def discretize(self, t: Tensor) -> Tensor:
        # floor, not round, so a uniform t in [0, 1) gives each k the same probability; the correction makes
        # grid times k / N (whose float product with N can fall just below k) map to themselves
        n = self.num_train_timesteps
        k = torch.floor(t.float() * n).long()
        k = (k + ((k + 1).float() / n <= t.float()).long()).clamp(0, n - 1)
        return k.to(t.dtype if t.is_floating_point() else torch.float32) / n

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        acp = self.alphas_cumprod.to(t.device)[self.index(t)]
        return acp.sqrt(), (1 - acp).sqrt()

    def sampling_times(self, steps: int, shift: float | None = None) -> Tensor:
        """`steps` grid times with diffusers' "trailing" spacing, then 0 (= return the clean estimate).

        Trailing spacing starts at the last training step k = N - 1, which zero-terminal SNR needs (Lin et al.
        2024, Table 2); diffusers' SDXL configs default to "leading" (k = 981, 961, ... for 50 steps), which
        never starts from pure noise. Ending at 0 is diffusers' `final_sigmas_type="zero"` (Euler, DPM-Solver)
        and DDIM's `set_alpha_to_one=True`.
        """
        n = self.num_train_timesteps
        if shift is not None:
            raise ValueError(f"sampling.shift={shift} applies to flow objectives; {type(self).__name__} samples on "
                             "its discrete schedule. Leave sampling.shift=null.")
        if not 1 <= steps <= n:
            raise ValueError(f"sampling.steps={steps}: a {n}-step discrete schedule takes 1 to {n} steps.")
        k = torch.round(torch.arange(n, 0, -n / steps, dtype=torch.float64)).long()[:steps] - 1
        return torch.cat([k.float() / n, torch.zeros(1)])


class EpsilonObjective(DiscreteVPObjective):
    """The network predicts the added noise (SDXL, Illustrious v0.1-v2.0)."""

    prediction = "eps"

    def target(self, x0, noise, t):
        return noise

    def to_x0(self, x_t, pred, t):
        alpha, sigma = self.alpha_sigma(t)
        if self.zero_terminal_snr and bool((alpha == 0).any()):
            raise ValueError("to_x0 is undefined for an eps prediction at zero SNR (alpha = 0); use v-prediction.")
        return (x_t - expand_like(sigma, x_t) * pred) / expand_like(alpha, x_t)

    def to_eps(self, x_t, pred, t):
        return pred


class VPredictionObjective(DiscreteVPObjective):
    """The network predicts v = alpha * noise - sigma * x0 (Salimans & Ho 2022; Illustrious v3.0-vpred)."""

    prediction = "v"

    def target(self, x0, noise, t):
        alpha, sigma = self.alpha_sigma(t)
        return expand_like(alpha, x0) * noise - expand_like(sigma, x0) * x0

    def to_x0(self, x_t, pred, t):
        alpha, sigma = self.alpha_sigma(t)
        return expand_like(alpha, x_t) * x_t - expand_like(sigma, x_t) * pred

    def to_eps(self, x_t, pred, t):
        alpha, sigma = self.alpha_sigma(t)
        return expand_like(sigma, x_t) * x_t + expand_like(alpha, x_t) * pred
