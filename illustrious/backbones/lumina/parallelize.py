"""Lumina-2's sharding and activation-checkpointing units: every Next-DiT block (noise and context refiners
and the main layers) and Gemma-2's decoder layers.

FSDP1 (`trainer=fsdp`) wraps and checkpoints these classes; FSDP2 (`trainer=fsdp2`) applies `fully_shard` to
each unit, then to Gemma and to the Next-DiT as a whole (`illustrious.backbones.parallel.apply_fsdp2`).
"""

from __future__ import annotations

from torch import nn

from illustrious.backbones.parallel import ParallelPolicy


def blocks() -> tuple[type[nn.Module], ...]:
    from diffusers.models.transformers.transformer_lumina2 import Lumina2TransformerBlock
    from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer

    return (Lumina2TransformerBlock, Gemma2DecoderLayer)


def shard_roots(backbone: nn.Module) -> list[nn.Module]:
    """Modules with their own forward call: the Gemma model, then the Next-DiT."""
    return [backbone.text_encoders["gemma"].model, backbone.denoiser]


POLICY = ParallelPolicy(wrap_units=blocks, checkpoint_units=blocks, shard_roots=shard_roots)
