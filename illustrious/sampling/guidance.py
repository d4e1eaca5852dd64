"""Classifier-free guidance as a wrapper that turns a conditional model into `denoise(x, t) -> x0`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from illustrious.backbones.base import Conditioning


def cfg_denoiser(model: Callable, to_x0: Callable, cond: Conditioning, uncond: Conditioning | None,
                 guidance_scale: float, extras: Mapping | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """`model(x_t, t, cond, extras) -> prediction`; guidance mixes the two predictions, then converts to x0.

    Mixing predictions or clean estimates is the same thing here: at a fixed t, x0 is affine in the prediction.
    """
    guided = uncond is not None and guidance_scale != 1.0
    both = Conditioning.cat([cond, uncond]) if guided else cond

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x.device, x.dtype).reshape(-1).expand(x.shape[0])
        if not guided:
            pred = model(x, tt, cond, extras)
        else:
            pred_cond, pred_uncond = model(torch.cat([x, x]), torch.cat([tt, tt]), both, extras).chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        return to_x0(x, pred, tt)

    return denoise
