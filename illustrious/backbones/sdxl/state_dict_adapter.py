"""SDXL key maps between diffusers' layout (what we train) and the original sgm/ldm single-file layout
(what Illustrious XL and NoobAI ship, and what ComfyUI, A1111 and Forge load).

Reading the original layout uses diffusers' own converters (diffusers.loaders.single_file_utils), so what we
load is what diffusers loads. Writing it has no diffusers counterpart: the maps below are the inverse of
those converters (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_open_clip_checkpoint`) and of ComfyUI's `SDXL.process_clip_state_dict_for_saving`; the tests feed
our exports back through diffusers' `from_single_file` and compare every tensor.

Reusable pieces (LoRA key names need them): `unet_prefix_map(config)` (diffusers module prefix -> original
module prefix, resnet sub-layer renames applied by `unet_key_to_original`), `vae_key_to_original`,
`clip_l_key_to_original`, `clip_g_key_to_original`, `text_model_key`, and the component prefixes below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."

# diffusers ResnetBlock2D sub-layer -> ldm ResBlock sub-layer
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
CLIP_G_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                "self_attn.out_proj": "attn.out_proj"}
# OpenCLIP keeps exp(logit_scale); ComfyUI writes ln(100), the trained bigG value. Generation never reads it.
OPEN_CLIP_LOGIT_SCALE = math.log(100.0)


# -- UNet ----------------------------------------------------------------------------------------------------
def unet_prefix_map(config: Mapping) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, original prefix, is_resnet) for every UNet module, from its config.

    The original UNet numbers its blocks flat: input_blocks[0] is conv_in, then per level `layers_per_block`
    (resnet, attention) pairs and a downsampler; output_blocks hold `layers_per_block + 1` pairs per level and
    the upsampler after the last (at .2 behind an attention, .1 without)."""
    lpb = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    up_types = config["up_block_types"]
    pairs = [("time_embedding.linear_1.", "time_embed.0.", False), ("time_embedding.linear_2.", "time_embed.2.", False),
             ("add_embedding.linear_1.", "label_emb.0.0.", False), ("add_embedding.linear_2.", "label_emb.0.2.", False),
             ("conv_in.", "input_blocks.0.0.", False), ("conv_norm_out.", "out.0.", False), ("conv_out.", "out.2.", False),
             ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.attentions.0.", "middle_block.1.", False),
             ("mid_block.resnets.1.", "middle_block.2.", True)]
    for i in range(levels):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", True),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", False)]
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", False))
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            pairs += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", True),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", False)]
        if i < levels - 1:
            slot = 2 if "CrossAttn" in up_types[i] else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.conv.", False))
    return pairs


def unet_key_to_original(key: str, prefix_map: list[tuple[str, str, bool]]) -> str:
    """One diffusers UNet key (or module name) -> its original name, without the `model.diffusion_model.` prefix."""
    for diffusers, original, is_resnet in prefix_map:
        if key.startswith(diffusers):
            rest = key[len(diffusers):]
            if is_resnet:
                head, _, tail = rest.partition(".")
                rest = UNET_RESNET[head] + ("." + tail if tail else "")
            return original + rest
    raise KeyError(f"UNet key {key!r} has no place in the original layout.")


def unet_to_original(state_dict: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    prefix_map = unet_prefix_map(config)
    return {UNET_PREFIX + unet_key_to_original(k, prefix_map): v for k, v in state_dict.items()}


def unet_from_original(checkpoint: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(dict(checkpoint), dict(config))


# -- VAE -----------------------------------------------------------------------------------------------------
def vae_key_to_original(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key -> its original name (without `first_stage_model.`)."""
    parts = key.split(".")
    side = parts[0]  # encoder | decoder | quant_conv | post_quant_conv
    if side not in ("encoder", "decoder"):
        return key
    rest = ".".join(parts[1:])
    if rest.startswith(("down_blocks.", "up_blocks.")):
        kind, i, sub = parts[1], int(parts[2]), parts[3]
        level = i if kind == "down_blocks" else levels - 1 - i
        name = "down" if kind == "down_blocks" else "up"
        tail = ".".join(parts[4:])
        if sub == "resnets":
            j, tail = tail.split(".", 1)
            return f"{side}.{name}.{level}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        sample = "downsample" if kind == "down_blocks" else "upsample"
        return f"{side}.{name}.{level}.{sample}.{tail.removeprefix('0.')}"  # samplers.0.conv -> sample.conv
    if rest.startswith("mid_block.resnets."):
        j, tail = rest.removeprefix("mid_block.resnets.").split(".", 1)
        return f"{side}.mid.block_{int(j) + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
    if rest.startswith("mid_block.attentions.0."):
        tail = rest.removeprefix("mid_block.attentions.0.")
        layer, _, param = tail.rpartition(".")
        return f"{side}.mid.attn_1.{VAE_ATTENTION[layer]}.{param}"
    return f"{side}.{rest.replace('conv_norm_out', 'norm_out')}"


def vae_to_original(state_dict: Mapping[str, Tensor], config: Mapping, prefix: str = VAE_PREFIX) -> dict[str, Tensor]:
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state_dict.items():
        original = vae_key_to_original(key, levels)
        if ".mid.attn_1." in original and value.ndim == 2:  # the original attention uses 1x1 convolutions
            value = value[:, :, None, None]
        out[prefix + original] = value
    return out


def vae_from_original(checkpoint: Mapping[str, Tensor], config: Mapping, prefix: str = VAE_PREFIX) -> dict[str, Tensor]:
    """The original autoencoder layout (SDXL's, and Flux's under ComfyUI's `vae.`) -> diffusers'."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_only = {k: v for k, v in checkpoint.items() if k.startswith(prefix)}
    return convert_ldm_vae_checkpoint(vae_only, dict(config))


# -- text encoders -------------------------------------------------------------------------------------------
def text_model_key(key: str) -> str:
    """transformers >= 5.6 flattens CLIPTextModel (no `text_model.`); the original keeps the HF names with it."""
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def clip_l_key_to_original(key: str) -> str:
    return CLIP_L_PREFIX + text_model_key(key)


def clip_l_to_original(state_dict: Mapping[str, Tensor], max_positions: int) -> dict[str, Tensor]:
    out = {clip_l_key_to_original(k): v for k, v in state_dict.items()
           if not k.endswith("position_ids") and not k.startswith("text_projection")}
    # a persistent buffer in the transformers that wrote SDXL; ComfyUI writes it too
    out[CLIP_L_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(max_positions).unsqueeze(0)
    return out


def clip_g_key_to_original(key: str) -> str:
    """One CLIPTextModelWithProjection key -> its OpenCLIP name (q/k/v map to the fused `attn.in_proj_*`)."""
    key = text_model_key(key)
    fixed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias",
             "text_projection.weight": "text_projection"}
    if key in fixed:
        return CLIP_G_PREFIX + fixed[key]
    rest = key.removeprefix("text_model.encoder.layers.")
    n, tail = rest.split(".", 1)
    layer, _, param = tail.rpartition(".")
    if layer in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        return f"{CLIP_G_PREFIX}transformer.resblocks.{n}.attn.in_proj_{param}"
    return f"{CLIP_G_PREFIX}transformer.resblocks.{n}.{CLIP_G_LAYER[layer]}.{param}"


def clip_g_to_original(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    sd = {text_model_key(k): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for key, value in sd.items():
        original = clip_g_key_to_original(key)
        if ".attn.in_proj_" in original:
            fused.setdefault(original, {})[key.rsplit(".", 2)[-2][0]] = value  # 'q' | 'k' | 'v'
        elif original.endswith("text_projection"):
            out[original] = value.T  # OpenCLIP multiplies x @ text_projection
        else:
            out[original] = value
    for original, qkv in fused.items():
        out[original] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    out[CLIP_G_PREFIX + "logit_scale"] = torch.tensor(OPEN_CLIP_LOGIT_SCALE)
    return out


def clip_l_from_original(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    converted = convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(CLIP_L_PREFIX)})
    return {k: v for k, v in converted.items() if not k.endswith("position_ids")}


def clip_g_from_original(model, checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    return convert_open_clip_checkpoint(model, {k: v for k, v in checkpoint.items() if k.startswith(CLIP_G_PREFIX)},
                                        prefix=CLIP_G_PREFIX)


def strip_text_model(state_dict: Mapping[str, Tensor], model) -> dict[str, Tensor]:
    """Match the `text_model.` wrapper to what this transformers version's model expects."""
    if hasattr(model, "text_model"):
        return dict(state_dict)
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


# -- the whole model ---------------------------------------------------------------------------------------------
def to_original(unet, clip_l, clip_g, vae=None) -> dict[str, Tensor]:
    """SDXL's single-file state dict (UNet, CLIP-L, OpenCLIP-bigG, and the VAE when there is one)."""
    out = unet_to_original(unet.state_dict(), unet.config)
    out.update(clip_l_to_original(clip_l.state_dict(), clip_l.config.max_position_embeddings))
    out.update(clip_g_to_original(clip_g.state_dict()))
    if vae is not None:
        out.update(vae_to_original(vae.state_dict(), vae.config))
    return out
