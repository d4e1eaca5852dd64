"""SDXL's sharding units (the UNet's transformer and resnet blocks, CLIP's layers) and activation-checkpointing
units (the UNet's blocks).

FSDP1 (`trainer=fsdp`) wraps and checkpoints these classes; FSDP2 (`trainer=fsdp2`) applies `fully_shard` to
each unit, then to the rest of each CLIP model part by part and to the UNet as a whole (`illustrious.backbones.parallel.apply_fsdp2`).
"""

from __future__ import annotations

from torch import nn

from illustrious.backbones.parallel import ParallelPolicy


def blocks() -> tuple[type[nn.Module], ...]:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    return (BasicTransformerBlock, ResnetBlock2D, CLIPEncoderLayer)


def unet_blocks() -> tuple[type[nn.Module], ...]:
    """Recomputed in backward: the UNet's blocks. CLIP's activations (77 tokens) are small beside them."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    return (BasicTransformerBlock, ResnetBlock2D)


def text_models(backbone: nn.Module) -> list[nn.Module]:
    return [enc.model for enc in backbone.text_encoders.values()]


def denoiser(backbone: nn.Module) -> list[nn.Module]:
    return [backbone.denoiser]


POLICY = ParallelPolicy(wrap_units=blocks, checkpoint_units=unet_blocks, shard_roots=denoiser, shard_by_parts=text_models)
