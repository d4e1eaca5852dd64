"""Samplers of training times t in [0, 1] (0 = clean, 1 = noise).

Each sampler draws from a base density on [0, 1] (`Uniform`, `LogitNormal`, `ModeSampling`, `BiasedUniform`), then
applies the
options every sampler shares, in this order:

0. a uniform share (`uniform_fraction=p`): each draw is taken from U[0, 1) with probability p instead of the
   density, so no time is left untrained (a density whose tails vanish, like the logit-normal's, never teaches
   the model what only the prompt can tell at t near 1); and a high-noise tail (`tail_fraction=p`, `tail_min=a`,
   `tail_after=f`, `tail_until=g`): while the fraction of training done is in [f, g), each draw is taken from
   U[a, 1) with probability p. Late in training the prompt's global content (an image's background colour) is
   learned at t near 1 without taking the early steps, where the high-noise draws cost the placement of what the
   prompt names (experiments/training_budget/README.md);
1. a time shift towards noise, either fixed (`shift=s`, SD3: t' = s t / (1 + (s - 1) t)) or resolution-dependent
   (`resolution_shift=True`, Flux / Lumina-2: the same map with s = exp(mu), mu linear in the image token count
   from 256 tokens -> 0.5 to 4096 -> 1.15);
2. a restricted range (`t_min`, `t_max`): t' = t_min + (t_max - t_min) t, so t never leaves [t_min, t_max]
   (kohya's --min_timestep / --max_timestep on a discrete schedule: t_min = min_timestep / 1000).

Discrete VP objectives then floor t onto their 1000-step grid (`Objective.discretize`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from illustrious.errors import ConfigError

# Flux / Lumina-2 / diffusers `calculate_shift`: mu is linear in the image token count through these points.
BASE_SEQ_LEN, BASE_SHIFT = 256, 0.5
MAX_SEQ_LEN, MAX_SHIFT = 4096, 1.15


def shift_time(t: Tensor, shift: float | Tensor) -> Tensor:
    """SD3's timestep shift: t' = s t / (1 + (s - 1) t); s > 1 moves mass towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def resolution_mu(image_seq_len: int) -> float:
    """Flux's `calculate_shift`: mu for an image of `image_seq_len` tokens; the shift is exp(mu)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return BASE_SHIFT + slope * (image_seq_len - BASE_SEQ_LEN)


def resolution_shift_time(t: Tensor, image_seq_len: int) -> Tensor:
    """Flux's `time_shift(mu, 1, t)` = exp(mu) / (exp(mu) + 1/t - 1), i.e. `shift_time` with s = exp(mu)."""
    return shift_time(t, math.exp(resolution_mu(image_seq_len)))


class TimestepSampler(nn.Module):
    """A base density on [0, 1] (subclasses), then an optional shift and an optional restricted range."""

    def __init__(self, shift: float | None = None, resolution_shift: bool = False, t_min: float = 0.0,
                 t_max: float = 1.0, uniform_fraction: float = 0.0, tail_fraction: float = 0.0,
                 tail_min: float = 0.85, tail_after: float = 0.0, tail_until: float = 1.0):
        super().__init__()
        if not 0.0 <= uniform_fraction <= 1.0:
            raise ConfigError(f"objective.timesteps.uniform_fraction={uniform_fraction}: must be in [0, 1].")
        self.uniform_fraction = uniform_fraction
        if not 0.0 <= tail_fraction <= 1.0:
            raise ConfigError(f"objective.timesteps.tail_fraction={tail_fraction}: must be in [0, 1].")
        if not 0.0 <= tail_min < 1.0:
            raise ConfigError(f"objective.timesteps.tail_min={tail_min}: must be in [0, 1), e.g. 0.85.")
        if not 0.0 <= tail_after < tail_until <= 1.0:
            raise ConfigError(f"objective.timesteps.tail_after={tail_after}, tail_until={tail_until}: the fractions "
                              "of training between which the tail is drawn, 0 <= tail_after < tail_until <= 1, "
                              "e.g. 0.5 and 1.")
        self.tail_fraction, self.tail_min = tail_fraction, tail_min
        self.tail_after, self.tail_until = tail_after, tail_until
        if shift is not None and shift <= 0:
            raise ConfigError(f"objective.timesteps.shift={shift}: a timestep shift must be > 0 (1 = no shift).")
        if shift is not None and resolution_shift:
            raise ConfigError("objective.timesteps.shift and objective.timesteps.resolution_shift are both set; "
                              "choose a fixed shift or the resolution-dependent one.")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ConfigError(f"objective.timesteps.t_min={t_min}, t_max={t_max}: need 0 <= t_min < t_max <= 1.")
        self.shift, self.resolution_shift = shift, resolution_shift
        self.t_min, self.t_max = t_min, t_max

    def base(self, n: int, generator: torch.Generator | None, device) -> Tensor:
        raise NotImplementedError

    def tail_drawn(self, progress: float | None) -> bool:
        """Whether the tail applies at this point of training: always without a window; with one, only when the
        progress is known (the training step under a Trainer passes it; a bare call, outside one, draws none)."""
        if (self.tail_after, self.tail_until) == (0.0, 1.0):
            return True
        return progress is not None and self.tail_after <= progress < self.tail_until

    def forward(self, n: int, *, generator: torch.Generator | None = None, image_seq_len: int | None = None,
                device: torch.device | str | None = None, progress: float | None = None) -> Tensor:
        """`n` training times; `progress` is the fraction of training done (the training step passes it)."""
        t = self.base(n, generator, device)
        if self.uniform_fraction > 0:  # drawn only when asked, so runs without it keep their random stream
            uniform = torch.rand(n, generator=generator, device=device)
            t = torch.where(torch.rand(n, generator=generator, device=device) < self.uniform_fraction, uniform, t)
        if self.tail_fraction > 0 and self.tail_drawn(progress):  # likewise drawn only when it applies
            tail = self.tail_min + (1 - self.tail_min) * torch.rand(n, generator=generator, device=device)
            t = torch.where(torch.rand(n, generator=generator, device=device) < self.tail_fraction, tail, t)
        if self.shift is not None:
            t = shift_time(t, self.shift)
        elif self.resolution_shift:
            if image_seq_len is None:
                raise ValueError("objective.timesteps.resolution_shift=true needs the image token count: "
                                 "pass image_seq_len to sample_t (the training step passes backbone.image_seq_len).")
            t = resolution_shift_time(t, image_seq_len)
        if (self.t_min, self.t_max) != (0.0, 1.0):
            t = self.t_min + (self.t_max - self.t_min) * t
        return t


class Uniform(TimestepSampler):
    def base(self, n, generator, device):
        return torch.rand(n, generator=generator, device=device)


class LogitNormal(TimestepSampler):
    """t = sigmoid(mean + std * z), z ~ N(0, 1) (SD3 / Flux; mean > 0 favours noisy times)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, **shared):
        super().__init__(**shared)
        if std <= 0:
            raise ConfigError(f"objective.timesteps.std={std}: must be > 0.")
        self.mean, self.std = mean, std

    def base(self, n, generator, device):
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * z)


class ModeSampling(TimestepSampler):
    """SD3's "mode" density (Esser et al. 2024, eq. 20; diffusers' `compute_density_for_timestep_sampling("mode")`):
    t = 1 - u - s (cos^2(pi u / 2) - 1 + u), u ~ U[0, 1). s > 0 peaks at the middle like the logit-normal but keeps
    a density of 1 / (1 + s) at both ends, so the nearly pure-noise times (where only the prompt tells the global
    colour) are still trained; s = 0 is uniform. Monotonic (a valid density) for -1 <= s <= 2 / (pi - 2).
    """

    def __init__(self, scale: float = 1.29, **shared):
        super().__init__(**shared)
        if not -1.0 <= scale <= 2 / (math.pi - 2):
            raise ConfigError(f"objective.timesteps.scale={scale}: SD3's mode density needs -1 <= scale <= "
                              f"{2 / (math.pi - 2):.3f} (1.29 in the paper).")
        self.scale = scale

    def base(self, n, generator, device):
        u = torch.rand(n, generator=generator, device=device)
        return 1 - u - self.scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)


class BiasedUniform(TimestepSampler):
    """Uniform, with times in [begin, end) `multiplier` times as likely as the rest.

    The continuous form of diffusers' `generate_timestep_weights` (SDXL training scripts, SimpleTuner's
    --timestep_bias_*): on a 1000-step schedule, strategy "later" with portion p is begin = 1 - p, end = 1;
    "earlier" is begin = 0, end = p; "range" is begin = timestep_bias_begin / 1000, end = timestep_bias_end / 1000.
    A multiplier below 1 makes the window rarer.
    """

    def __init__(self, multiplier: float = 2.0, begin: float = 0.5, end: float = 1.0, **shared):
        super().__init__(**shared)
        if multiplier <= 0:
            raise ConfigError(f"objective.timesteps.multiplier={multiplier}: must be > 0.")
        if not 0.0 <= begin < end <= 1.0:
            raise ConfigError(f"objective.timesteps.begin={begin}, end={end}: need 0 <= begin < end <= 1.")
        self.multiplier, self.begin, self.end = multiplier, begin, end

    def window_probability(self) -> float:
        width = self.end - self.begin
        return self.multiplier * width / (self.multiplier * width + 1 - width)

    def base(self, n, generator, device):
        width = self.end - self.begin
        inside = torch.rand(n, generator=generator, device=device) < self.window_probability()
        u = torch.rand(n, generator=generator, device=device)
        in_window = self.begin + width * u
        # uniform over [0, 1) minus the window: stretch u over the rest, then step over the window
        rest = u * (1 - width)
        outside = torch.where(rest < self.begin, rest, rest + width)
        return torch.where(inside, in_window, outside)
