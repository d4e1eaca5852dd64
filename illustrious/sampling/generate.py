"""Text -> image (and image -> image) with any backbone, objective and sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from illustrious.backbones.base import Backbone
from illustrious.objectives.base import Objective
from illustrious.sampling.guidance import cfg_denoiser, cfg_truncation
from illustrious.sampling.samplers import SAMPLERS, STOCHASTIC_SAMPLERS


def image_generators(n: int, seed: int) -> list[torch.Generator]:
    """One generator per image, seeded with seed + i: it draws the image's initial noise, then any noise a
    stochastic sampler adds, so the same prompt and seed give the same image in any batch (up to float
    rounding: CPU kernels may sum in another order for another batch size)."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def initial_noise(n: int, shape: tuple[int, ...], seed: int,
                  generators: list[torch.Generator] | None = None) -> Tensor:
    """Noise for image i depends only on (seed + i) (drawn from `generators[i]` when given)."""
    generators = generators if generators is not None else image_generators(n, seed)
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def img2img_times(times: Tensor, strength: float) -> Tensor:
    """The tail of a sampling grid that img2img runs: diffusers' `get_timesteps`, int(steps * strength) steps."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength}: must be in (0, 1] (1 = start from pure noise, as txt2img).")
    steps = len(times) - 1
    kept = min(int(steps * strength), steps)
    if kept < 1:
        raise ValueError(f"strength={strength} with steps={steps} leaves no denoising step; raise strength or steps.")
    return times[steps - kept:]


@torch.no_grad()
def generate(backbone: Backbone, objective: Objective, prompts: list[str], *, height: int, width: int,
             steps: int = 20, guidance_scale: float = 4.0, negative_prompt: str = "", seed: int = 0,
             sampler: str = "euler", shift: float | None = None, guidance_rescale: float = 0.0,
             cfg_trunc_ratio: float = 1.0, cfg_renorm: bool = False, init_images: Tensor | None = None,
             strength: float = 1.0, batch_size: int = 16, callback: Callable[[dict], None] | None = None) -> Tensor:
    """Sample one image per prompt; returns pixels in [-1, 1], (N, 3, height, width).

    `init_images` (N, 3, height, width) in [-1, 1] turns this into img2img: each is encoded, noised to the
    grid time where `strength` of the steps remain, and denoised from there. `callback` receives the sampler's
    per-step dict plus "start", the index of the chunk's first prompt.
    """
    if height % backbone.pixel_multiple or width % backbone.pixel_multiple:
        raise ValueError(f"Image size {height}x{width} must be a multiple of {backbone.pixel_multiple} for this backbone.")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}.")
    if init_images is not None and tuple(init_images.shape) != (len(prompts), 3, height, width):
        raise ValueError(f"init_images has shape {tuple(init_images.shape)}; expected {(len(prompts), 3, height, width)}.")
    f = backbone.autoencoder.spatial_factor
    device = next(backbone.parameters()).device
    latent_shape = (backbone.latent_channels, height // f, width // f)
    full_times = objective.sampling_times(steps, shift=shift).to(device)
    times = full_times if init_images is None else img2img_times(full_times, strength)
    unguided = cfg_truncation(full_times, cfg_trunc_ratio) if cfg_trunc_ratio < 1.0 else None
    was_training = backbone.training
    backbone.eval()
    images = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            cond = backbone.encode_text(chunk)
            uncond = backbone.encode_text([negative_prompt] * len(chunk)) if guidance_scale != 1.0 else None
            denoise = cfg_denoiser(backbone, objective.to_x0, cond, uncond, guidance_scale,
                                   guidance_rescale=guidance_rescale, renormalize=cfg_renorm, unguided=unguided)
            generators = image_generators(len(chunk), seed + start)
            x = initial_noise(len(chunk), latent_shape, seed + start, generators).to(device)
            if init_images is not None:
                latents = backbone.encode_image(init_images[start : start + batch_size].to(device))
                x = objective.add_noise(latents, x.to(latents.dtype), times[:1].expand(len(chunk)))
            step_callback = None if callback is None else (lambda info, start=start: callback({**info, "start": start}))
            noise = {"generator": generators} if sampler in STOCHASTIC_SAMPLERS else {}
            x0 = SAMPLERS[sampler](denoise, x, times, objective.alpha_sigma, callback=step_callback, **noise)
            images.append(backbone.decode(x0).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(images)
