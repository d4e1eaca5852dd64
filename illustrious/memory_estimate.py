"""How much memory a training step at a given image size will need, measured on small sizes before training.

Activations dominate a diffusion model's training memory, and they are what grows with the bucket: the tensors
autograd saves for the backward pass. `saved_bytes` counts them exactly (unique storages, parameters excluded)
for one forward pass at a small size; `activation_model` measures two small squares and fits
bytes = a * pixels + b * pixels^2 (convolutions and MLPs grow with the pixel count, attention maps with its
square), which extrapolates to the largest bucket without ever running it. Gradients, optimizer state and an
EMA copy follow from the parameter count. See illustrious.callbacks.memory_check for where it is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

# Optimizer state per trainable parameter, in units of the parameter's own size (AdamW: two moments).
OPTIMIZER_STATE_FACTOR = {"AdamW": 2.0, "Adam": 2.0, "Adafactor": 1.0, "AdamW8bit": 0.5, "Prodigy": 4.0}
# Peak memory of a training step over the saved activations alone: the backward pass's gradients of the
# activations and temporaries. Measured on sdxl_tiny at 512^2, batch 2, on the CPU: resident memory grew by
# 2.17 GB in forward + backward for 1.75 GB of saved activations (1.24x).
BACKWARD_FACTOR = 1.25
# Below this many pixels the largest bucket itself is measured: cheap, and exact.
DIRECT_PIXELS = 256 * 256


@dataclass(frozen=True)
class ActivationModel:
    """Saved-activation bytes per sample as a * pixels + b * pixels^2."""

    linear: float
    quadratic: float

    def bytes_per_sample(self, pixels: int) -> float:
        return self.linear * pixels + self.quadratic * pixels * pixels


def saved_bytes(module, height: int, width: int, captions: Sequence[str], context=None) -> int:
    """Bytes autograd saves for backward in one forward pass of `module` (a DiffusionModule) on a batch of
    len(captions) black images of this size at t = 0.5. Random state is untouched (no noise is drawn)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return tensor

    device = next(module.parameters()).device
    pixels = torch.zeros(len(captions), 3, height, width, device=device)
    with torch.enable_grad(), (context or nullcontext()), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x0 = module.latents({"pixels": pixels})
        cond = module.backbone.encode_text(list(captions))
        t = torch.full((x0.shape[0],), 0.5, device=device)
        x_t = module.objective.add_noise(x0, torch.zeros_like(x0), t)
        module.backbone(x_t, t, cond, None)
    return sum(seen.values())


def fit_activation_model(samples: Sequence[tuple[int, int]]) -> ActivationModel:
    """(pixels, bytes per sample) at two sizes -> the linear-plus-quadratic model through both."""
    (n1, m1), (n2, m2) = samples
    quadratic = (m2 / n2 - m1 / n1) / (n2 - n1)
    if quadratic < 0:  # no measurable quadratic part: linear through the larger point
        return ActivationModel(m2 / n2, 0.0)
    return ActivationModel(m1 / n1 - quadratic * n1, quadratic)


def round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def activation_bytes(module, height: int, width: int, batch_size: int, captions: Sequence[str], multiple: int,
                     context=None) -> float:
    """Saved activations of a batch at (height, width): measured there if small, else extrapolated from two
    squares of 1/16 and 1/4 of its area (measured with one sample each)."""
    pixels = height * width
    if pixels <= DIRECT_PIXELS:
        per_sample = saved_bytes(module, height, width, captions[:1], context)
        return per_sample * batch_size
    side = math.sqrt(pixels)
    points = []
    for fraction in (0.25, 0.5):
        s = round_to(side * fraction, multiple)
        points.append((s * s, saved_bytes(module, s, s, captions[:1], context)))
    if points[0][0] == points[1][0]:
        return points[1][1] / points[1][0] * pixels * batch_size
    return fit_activation_model(points).bytes_per_sample(pixels) * batch_size


def state_bytes(module: nn.Module, optimizer_name: str, with_ema: bool) -> dict[str, float]:
    """Gradients, optimizer state and an EMA copy: what training adds to the parameters already in memory."""
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    everything = sum(p.numel() * p.element_size() for p in module.parameters())
    return {
        "gradients": float(trainable),
        "optimizer": trainable * OPTIMIZER_STATE_FACTOR.get(optimizer_name, 2.0),
        "ema": float(everything) if with_ema else 0.0,
    }


def free_bytes(device: torch.device, processes_sharing: int = 1) -> float:
    """Memory still free for this process: the GPU's free memory, or the host's available memory split
    between the processes training on it."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    import psutil

    return psutil.virtual_memory().available / max(processes_sharing, 1)


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB"
