"""SDXL LoRA keys as kohya's sd-scripts writes them (and ComfyUI, A1111 and diffusers read them).

sd-scripts trains SDXL on the original (ldm/sgm) UNet, so UNet keys use its block layout:
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`; text encoders use the transformers module
paths: `lora_te1_text_model_encoder_layers_0_self_attn_q_proj` (CLIP-L), `lora_te2_...` (OpenCLIP-bigG).
Inside a transformer block the ldm and diffusers names agree; only the block prefix differs. Each layer
stores `.lora_down.weight` (A), `.lora_up.weight` (B) and `.alpha` (scale = alpha / rank); LoHa and LoKr
store LyCORIS' `.hada_w1_a` ... / `.lokr_w1` ... names with the same `.alpha`.
The names are derived from the full-checkpoint key map (backbones/sdxl/state_dict_adapter.py), restricted
to the attention blocks: kohya's default targets, and the UNet part diffusers' kohya loader is tested on here.
"""

from __future__ import annotations

from collections.abc import Mapping

from illustrious.backbones.sdxl.state_dict_adapter import (
    text_model_key,
    unet_key_to_original,
    unet_prefix_map,
)
from illustrious.errors import ConfigError

TEXT_ENCODER_PREFIX = {"text_encoder_1": "lora_te1_", "text_encoder_2": "lora_te2_"}
FILE_NAMES = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight"}  # LoHa/LoKr keep peft's = LyCORIS' names


def unet_ldm_path(path: str, unet_config: Mapping) -> str:
    """diffusers UNet module path -> ldm path (`down_blocks.1.attentions.0.x` -> `input_blocks.4.1.x`), for
    modules inside the attention (transformer) blocks."""
    if ".attentions." in f".{path}":
        return unet_key_to_original(path, unet_prefix_map(unet_config))
    raise ConfigError(f"LoRA on UNet module {path!r} has no kohya (ldm) name here: the kohya/ComfyUI format covers "
                      "the attention blocks (kohya's default targets); save it in the diffusers format instead.")


def clip_path(path: str) -> str:
    """CLIP text-model paths as the original weights and kohya name them (with `text_model.`, which
    transformers 5's CLIPTextModel dropped; CLIPTextModelWithProjection still has it)."""
    return text_model_key(path)


def layer_name(group: str, path: str, unet_config: Mapping) -> str:
    """The kohya name of one adapted layer (without the tensor suffix)."""
    if group == "denoiser":
        return "lora_unet_" + unet_ldm_path(path, unet_config).replace(".", "_")
    return TEXT_ENCODER_PREFIX[group] + clip_path(path).replace(".", "_")
