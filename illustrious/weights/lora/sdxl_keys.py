"""SDXL LoRA keys as kohya's sd-scripts writes them (and ComfyUI, A1111 and diffusers read them).

sd-scripts trains SDXL on the original (ldm/sgm) UNet, so UNet keys use its block layout:
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`; text encoders use the transformers module
paths: `lora_te1_text_model_encoder_layers_0_self_attn_q_proj` (CLIP-L), `lora_te2_...` (OpenCLIP-bigG).
Inside a transformer block the ldm and diffusers names agree; only the block prefix differs. Each layer
stores `.lora_down.weight` (A), `.lora_up.weight` (B) and `.alpha` (scale = alpha / rank); LoHa and LoKr
store LyCORIS' `.hada_w1_a` ... / `.lokr_w1` ... names with the same `.alpha`.
(The full-checkpoint key map lives in backbones/sdxl/state_dict_adapter.py; this is the LoRA-target subset.)
"""

from __future__ import annotations

import re

from illustrious.errors import ConfigError

TEXT_ENCODER_PREFIX = {"text_encoder_1": "lora_te1_", "text_encoder_2": "lora_te2_"}
FILE_NAMES = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight"}  # LoHa/LoKr keep peft's = LyCORIS' names


def unet_ldm_path(path: str, layers_per_block: int) -> str:
    """diffusers UNet module path -> ldm path, for modules inside the attention (transformer) blocks.

    ldm numbers input blocks across levels: conv_in is input_blocks.0, then each level has
    `layers_per_block` (resnet, attention) blocks and a downsampler; output levels have one more block.
    """
    n = layers_per_block + 1
    rules = (
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda i, j, rest: f"input_blocks.{1 + i * n + j}.1.{rest}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda rest: f"middle_block.1.{rest}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda i, j, rest: f"output_blocks.{i * n + j}.1.{rest}"),
    )
    for pattern, build in rules:
        m = re.fullmatch(pattern, path)
        if m:
            return build(*(int(g) if g.isdigit() else g for g in m.groups()))
    raise ConfigError(f"LoRA on UNet module {path!r} has no kohya (ldm) name here: the kohya/ComfyUI format covers "
                      "the attention blocks (kohya's default targets); save it in the diffusers format instead.")


def clip_path(path: str) -> str:
    """CLIP text-model paths as the original weights and kohya name them: transformers 5's CLIPTextModel
    has no `text_model` wrapper (CLIPTextModelWithProjection still has), older releases and files do."""
    return path if path.startswith("text_model.") or path == "text_projection" else f"text_model.{path}"


def layer_name(group: str, path: str, layers_per_block: int) -> str:
    """The kohya name of one adapted layer (without the tensor suffix)."""
    if group == "denoiser":
        return "lora_unet_" + unet_ldm_path(path, layers_per_block).replace(".", "_")
    return TEXT_ENCODER_PREFIX[group] + clip_path(path).replace(".", "_")
