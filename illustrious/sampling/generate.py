"""Text -> image with any backbone, objective and sampler."""

from __future__ import annotations

import torch
from torch import Tensor

from illustrious.backbones.base import Backbone
from illustrious.objectives.base import Objective
from illustrious.sampling.guidance import cfg_denoiser
from illustrious.sampling.samplers import SAMPLERS


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """Noise for image i depends only on (seed + i): the same prompt and seed give the same image in any batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


@torch.no_grad()
def generate(backbone: Backbone, objective: Objective, prompts: list[str], *, height: int, width: int,
             steps: int = 20, guidance_scale: float = 4.0, negative_prompt: str = "", seed: int = 0,
             sampler: str = "euler", shift: float | None = None, batch_size: int = 16) -> Tensor:
    """Sample one image per prompt; returns pixels in [-1, 1], (N, 3, height, width)."""
    if height % backbone.pixel_multiple or width % backbone.pixel_multiple:
        raise ValueError(f"Image size {height}x{width} must be a multiple of {backbone.pixel_multiple} for this backbone.")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}.")
    f = backbone.autoencoder.spatial_factor
    device = next(backbone.parameters()).device
    latent_shape = (backbone.latent_channels, height // f, width // f)
    times = objective.sampling_times(steps, shift=shift).to(device)
    was_training = backbone.training
    backbone.eval()
    images = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            cond = backbone.encode_text(chunk)
            uncond = backbone.encode_text([negative_prompt] * len(chunk)) if guidance_scale != 1.0 else None
            denoise = cfg_denoiser(backbone, objective.to_x0, cond, uncond, guidance_scale)
            x = initial_noise(len(chunk), latent_shape, seed + start).to(device)
            x0 = SAMPLERS[sampler](denoise, x, times, objective.alpha_sigma)
            images.append(backbone.decode(x0).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(images)
