"""Lumina-2's sharding units (every Next-DiT block: noise and context refiners and the main layers; Gemma-2's
decoder layers) and activation-checkpointing units (the Next-DiT blocks).

FSDP1 (`trainer=fsdp`) wraps and checkpoints these classes; FSDP2 (`trainer=fsdp2`) applies `fully_shard` to
each unit, then to the rest of Gemma part by part and to the Next-DiT as a whole (`illustrious.backbones.parallel.apply_fsdp2`).
"""

from __future__ import annotations

from torch import nn

from illustrious.backbones.parallel import ParallelPolicy


def blocks() -> tuple[type[nn.Module], ...]:
    from diffusers.models.transformers.transformer_lumina2 import Lumina2TransformerBlock
    from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer

    return (Lumina2TransformerBlock, Gemma2DecoderLayer)


def dit_blocks() -> tuple[type[nn.Module], ...]:
    """Recomputed in backward: the Next-DiT's blocks. Gemma's activations (a few hundred tokens) are small beside
    them, and PyTorch's checkpoint wrapper breaks Gemma-2's per-layer attention masks."""
    from diffusers.models.transformers.transformer_lumina2 import Lumina2TransformerBlock

    return (Lumina2TransformerBlock,)


def text_models(backbone: nn.Module) -> list[nn.Module]:
    return [backbone.text_encoders["gemma"].model]


def denoiser(backbone: nn.Module) -> list[nn.Module]:
    return [backbone.denoiser]


POLICY = ParallelPolicy(wrap_units=blocks, checkpoint_units=dit_blocks, shard_roots=denoiser, shard_by_parts=text_models)
