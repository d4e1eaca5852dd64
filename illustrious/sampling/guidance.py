"""Classifier-free guidance as a wrapper that turns a conditional model into `denoise(x, t) -> x0`.

Guidance, its rescale and Lumina's renormalisation act on the model's raw prediction (eps, v or flow velocity),
as in diffusers' pipelines; only the result is converted to a clean estimate, so samplers never see them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from illustrious.backbones.base import Conditioning


def rescale_guidance(guided: Tensor, cond: Tensor, rescale: float) -> Tensor:
    """Guidance rescale (Lin et al. 2024, section 3.4): diffusers' `rescale_noise_cfg`, used as is."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    return rescale_noise_cfg(guided, cond, guidance_rescale=rescale)


def renormalize_guidance(guided: Tensor, cond: Tensor) -> Tensor:
    """Lumina-2's CFG renormalisation (`Lumina2Pipeline`, cfg_normalization=True): scale the guided prediction
    to the conditional prediction's norm, taken over the last dimension (image width for (B, C, H, W))."""
    return guided * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))


def cfg_truncation(times: Tensor, ratio: float) -> Callable[[Tensor], bool]:
    """Lumina-2's CFG truncation: guidance only while (i + 1) / steps <= ratio, for step i of the grid `times`
    (`steps + 1` times ending at 0, as `Objective.sampling_times` gives); later steps use the conditional
    prediction alone and skip the unconditional pass. ratio = 1 never truncates."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling.cfg_trunc_ratio={ratio}: must be in [0, 1] (1 = never truncate).")
    steps = len(times) - 1
    step_of = {float(t): i for i, t in enumerate(times[:-1].tolist())}

    def unguided(t: Tensor) -> bool:
        i = step_of.get(float(t))
        if i is None:
            raise ValueError(f"cfg truncation: t={float(t)} is not on the sampling grid it was built for.")
        return (i + 1) / steps > ratio

    return unguided


def padding_chunk(model, cond: Conditioning, uncond: Conditioning) -> Tensor | None:
    """The chunk that pads the shorter of two unmasked conditionings (`Backbone.padding_chunk`: the empty
    prompt's encoding, A1111's choice); None (zeros with a False mask) when masked or of equal length."""
    if cond.mask is not None or uncond.mask is not None or cond.tokens.shape[1] == uncond.tokens.shape[1]:
        return None
    chunk = getattr(model, "padding_chunk", None)
    return chunk() if chunk is not None else None


def cfg_denoiser(model: Callable, to_x0: Callable, cond: Conditioning, uncond: Conditioning | None,
                 guidance_scale: float, extras: Mapping | None = None, *, guidance_rescale: float = 0.0,
                 renormalize: bool = False, unguided: Callable[[Tensor], bool] | None = None,
                 ) -> Callable[[Tensor, Tensor], Tensor]:
    """`model(x_t, t, cond, extras) -> prediction`; returns `denoise(x, t) -> x0`.

    guided = uncond + scale (cond - uncond), then, in this order, optional guidance rescale
    (`guidance_rescale` in [0, 1], diffusers' SDXL / zero-terminal-SNR v-pred setting, e.g. 0.7) and optional
    Lumina renormalisation (`renormalize`). `unguided(t)` True skips guidance at t (see `cfg_truncation`).
    Guidance is on when `uncond` is given and the scale is not 1.
    """
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"sampling.guidance_rescale={guidance_rescale}: must be in [0, 1] (0 = off).")
    guided = uncond is not None and guidance_scale != 1.0
    both = Conditioning.cat([cond, uncond], padding_chunk(model, cond, uncond)) if guided else cond

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x.device, x.dtype).reshape(-1).expand(x.shape[0])
        if not guided or (unguided is not None and unguided(t)):
            return to_x0(x, model(x, tt, cond, extras), tt)
        pred_cond, pred_uncond = model(torch.cat([x, x]), torch.cat([tt, tt]), both, extras).chunk(2)
        pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        if guidance_rescale > 0:
            pred = rescale_guidance(pred, pred_cond, guidance_rescale)
        if renormalize:
            pred = renormalize_guidance(pred, pred_cond)
        return to_x0(x, pred, tt)

    return denoise
