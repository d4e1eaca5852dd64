"""SDXL's sharding and activation-checkpointing units: the UNet's transformer and resnet blocks, CLIP's layers.

FSDP1 (`trainer=fsdp`) wraps and checkpoints these classes; FSDP2 (`trainer=fsdp2`) applies `fully_shard` to
each unit, then to the UNet and to each CLIP model as a whole (`illustrious.backbones.parallel.apply_fsdp2`).
"""

from __future__ import annotations

from torch import nn

from illustrious.backbones.parallel import ParallelPolicy


def blocks() -> tuple[type[nn.Module], ...]:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    return (BasicTransformerBlock, ResnetBlock2D, CLIPEncoderLayer)


def shard_roots(backbone: nn.Module) -> list[nn.Module]:
    """Modules with their own forward call: each CLIP model, then the UNet."""
    return [*(enc.model for enc in backbone.text_encoders.values()), backbone.denoiser]


POLICY = ParallelPolicy(wrap_units=blocks, checkpoint_units=blocks, shard_roots=shard_roots)
