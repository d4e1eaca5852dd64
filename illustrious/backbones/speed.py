"""Training-speed levers of a backbone: the attention kernel, selective activation checkpointing per block, and
regional compilation of the repeated blocks. (Channels-last belongs to the UNet: `SDXLBackbone`.)

The blocks are the backbone's checkpoint units from its parallel policy (`<backbone>/parallelize.py`): the
UNet's transformer and resnet blocks, the Next-DiT's blocks. BENCHMARKS.md measures each lever
(`benchmarks/gpu_throughput.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import nn

from illustrious.errors import ConfigError

# `backbone.attention`: which PyTorch SDPA kernel attention prefers. "auto" leaves PyTorch's choice.
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
# `backbone.compile`: "regional" compiles each repeated block on its own (short compile, shared across
# blocks of one shape); the whole model is never compiled (graph breaks at its data-dependent Python loops).
COMPILE_MODES = ("none", "regional")


def sdpa_backends(name: str) -> list | None:
    """The SDPA backends in priority order for `name`, or None for PyTorch's own choice.

    A kernel that cannot run a call (flash or cuDNN with an attention mask, e.g. Lumina-2's caption refiner)
    falls back to memory-efficient attention, then math, so a forced kernel never stops a model; "math"
    alone is the reference.
    """
    from torch.nn.attention import SDPBackend

    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"backbone.attention={name!r}: needs one of {', '.join(ATTENTION_BACKENDS)}, "
                          "e.g. backbone.attention=flash.")
    first = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}.get(name)
    if first is None:
        return None
    fallbacks = [] if first == SDPBackend.MATH else [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return [first, *[b for b in fallbacks if b != first]]


def attention_context(name: str) -> contextlib.AbstractContextManager:
    """A context in which scaled_dot_product_attention uses the kernel `name` prefers."""
    backends = sdpa_backends(name)
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends, set_priority=True)


def checkpoint_contexts(name: str) -> Callable[[], tuple]:
    """`context_fn` for torch.utils.checkpoint: the recomputation in the backward pass runs outside the
    backbone's forward, so it must choose the same attention kernel as the forward did (else the saved
    tensors differ and checkpointing fails)."""
    return lambda: (attention_context(name), attention_context(name))


def checkpoint_function(name: str) -> Callable:
    """diffusers' `gradient_checkpointing_func` that keeps the attention kernel in the recomputation."""
    from torch.utils.checkpoint import checkpoint

    def run(module, *args):
        return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=checkpoint_contexts(name))

    return run


def selected(n: int, fraction: float) -> list[int]:
    """`floor(n * fraction)` indices out of `n`, spread evenly (0.5 = every other block, 1 = all)."""
    if not 0 <= fraction <= 1:
        raise ConfigError(f"backbone.checkpoint_blocks={fraction}: needs a fraction in [0, 1], e.g. 0.5 "
                          "(every other block), 1 (all blocks) or 0 (none).")
    return [i for i in range(n) if int((i + 1) * fraction + 1e-9) > int(i * fraction + 1e-9)]


def denoiser_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The denoiser's repeated blocks (its parallel policy's checkpoint units), in forward order."""
    classes = backbone.parallel_policy().units("checkpoint")
    return [m for m in backbone.denoiser.modules() if isinstance(m, classes)]


def checkpoint_blocks(backbone: nn.Module, fraction: float, attention: str = "auto") -> list[nn.Module]:
    """Recompute the activations of this fraction of the denoiser's blocks in the backward pass (selective
    checkpointing: memory for compute, block by block); returns the blocks chosen."""
    from illustrious.backbones.parallel import apply_activation_checkpointing

    blocks = denoiser_blocks(backbone)
    chosen = [blocks[i] for i in selected(len(blocks), fraction)]
    if chosen:
        apply_activation_checkpointing(chosen, backbone.denoiser, context_fn=checkpoint_contexts(attention))
    return chosen


def compile_regions(backbone: nn.Module, **compile_options) -> list[nn.Module]:
    """torch.compile each of the denoiser's blocks in place (`nn.Module.compile`: names and state-dict keys
    stay as they are); compilation happens at each block's first call."""
    import torch._dynamo

    blocks = denoiser_blocks(backbone)
    # blocks of one class share a code object; each distinct shape (channels, resolution) is one more entry
    limit = max(64, len({(type(b), sum(p.numel() for p in b.parameters())) for b in blocks}) * 4)
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), limit))
    for block in blocks:
        block.compile(**compile_options)
    return blocks

