"""The noise a training target is built from, with the tricks of kohya's sd-scripts.

Order and semantics follow `train_util.get_noise_noisy_latents_and_timesteps`: Gaussian noise, plus a per-channel
offset (`apply_noise_offset`), then multi-resolution "pyramid" noise (`pyramid_noise_like`); the target is built
from that noise. Input perturbation (`--ip_noise_gamma`) adds fresh noise to what goes into x_t only, so the
network is trained to predict the unperturbed noise (Ning et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from illustrious.errors import ConfigError


def _strength(value: float, random_strength: bool, generator, device) -> Tensor | float:
    """kohya's *_random_strength: a strength drawn uniformly from [0, value] once per batch."""
    return torch.rand(1, generator=generator, device=device) * value if random_strength else value


def noise_offset(x0: Tensor, noise: Tensor, offset: Tensor | float, generator=None) -> Tensor:
    """noise + offset * N(0, 1) per sample and channel (constant over space): lets the model shift mean brightness."""
    shape = (x0.shape[0], x0.shape[1]) + (1,) * (x0.dim() - 2)
    return noise + offset * torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)


def pyramid_noise_like(noise: Tensor, iterations: int, discount: float, generator=None) -> Tensor:
    """kohya's `pyramid_noise_like` (multi-resolution noise, J. Whitaker): add upsampled coarse noise at random
    scale factors r in [2, 4), weighted discount**i, stop at 1 pixel, then rescale to unit std over the batch.
    Here the scale factors come from `generator` (kohya uses Python's `random`)."""
    b, c, h, w = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        r = float(torch.rand(1, generator=generator, device=noise.device)) * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = torch.randn((b, c, hn, wn), generator=generator, device=noise.device, dtype=noise.dtype)
        noise += F.interpolate(coarse, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


class GaussianNoise(nn.Module):
    """Standard Gaussian noise with optional offset, pyramid noise and input perturbation (all off by default).

    offset: kohya --noise_offset (0.0357 in SDXL's own fine-tunes, 0.03-0.1 common).
    offset_random_strength: kohya --noise_offset_random_strength.
    pyramid_iterations / pyramid_discount: kohya --multires_noise_iterations / --multires_noise_discount.
    input_perturbation: kohya --ip_noise_gamma (0.1 in Ning et al.); input_perturbation_random_strength likewise.
    """

    def __init__(self, offset: float = 0.0, offset_random_strength: bool = False, pyramid_iterations: int = 0,
                 pyramid_discount: float = 0.3, input_perturbation: float = 0.0,
                 input_perturbation_random_strength: bool = False):
        super().__init__()
        for name, value in (("offset", offset), ("pyramid_iterations", pyramid_iterations),
                            ("input_perturbation", input_perturbation)):
            if value < 0:
                raise ConfigError(f"objective.noise.{name}={value}: must be >= 0 (0 turns it off).")
        if not 0 < pyramid_discount <= 1:
            raise ConfigError(f"objective.noise.pyramid_discount={pyramid_discount}: must be in (0, 1].")
        self.offset, self.offset_random_strength = offset, offset_random_strength
        self.pyramid_iterations, self.pyramid_discount = pyramid_iterations, pyramid_discount
        self.input_perturbation = input_perturbation
        self.input_perturbation_random_strength = input_perturbation_random_strength

    def forward(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The noise both x_t and the target are built from."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.offset:
            strength = _strength(self.offset, self.offset_random_strength, generator, x0.device)
            noise = noise_offset(x0, noise, strength, generator)
        if self.pyramid_iterations:
            if x0.dim() != 4:
                raise ValueError(f"objective.noise.pyramid_iterations needs (B, C, H, W) latents, got shape {tuple(x0.shape)}.")
            noise = pyramid_noise_like(noise, self.pyramid_iterations, self.pyramid_discount, generator)
        return noise

    def perturb(self, noise: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The noise that goes into x_t: `noise + gamma * N(0, 1)` under input perturbation, else `noise` itself."""
        if not self.input_perturbation:
            return noise
        gamma = _strength(self.input_perturbation, self.input_perturbation_random_strength, generator, noise.device)
        return noise + gamma * torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
