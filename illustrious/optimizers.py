"""Optimizers that need a check before they can be built (the rest are named directly in conf/optim/)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from illustrious.errors import ConfigError


def adamw_8bit(params: Iterable, **kwargs) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit, only with CUDA and bitsandbytes present (it has no CPU kernels)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if not torch.cuda.is_available() or not all(p.is_cuda for p in tensors):
        raise ConfigError("optim=adamw8bit needs the model on a CUDA GPU (bitsandbytes' 8-bit AdamW has no CPU "
                          "kernels); on this machine use optim=adamw or optim=adafactor.")
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("optim=adamw8bit needs bitsandbytes: `uv pip install bitsandbytes` (or pip), or use "
                          "optim=adamw.") from None
    return bitsandbytes.optim.AdamW8bit(groups, **kwargs)
