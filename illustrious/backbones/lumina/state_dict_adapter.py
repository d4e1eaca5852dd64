"""Lumina-2 key maps between diffusers' layout (Lumina2Transformer2DModel, what we train) and the original
Next-DiT layout of Alpha-VLLM's repository (its consolidated checkpoints, Illustrious-Lumina v0.03), which
ComfyUI's single files use too, under `model.diffusion_model.` (comfy/ldm/lumina/model.py).

The original fuses q, k and v into one `attention.qkv` projection (grouped-query: q has `heads` heads, k and v
`kv_heads`), names the norms `attention_norm1/2`, and carries an unused `norm_final.weight` (diffusers'
`convert_lumina2_to_diffusers` drops it; we write ones so strict loaders find it). Reusable pieces:
`transformer_key_to_original`, `transformer_to_original`, `transformer_from_original`, and the ComfyUI prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

COMFY_MODEL_PREFIX = "model.diffusion_model."
COMFY_VAE_PREFIX = "vae."
COMFY_GEMMA_PREFIX = "text_encoders.gemma2_2b.transformer.model."
COMFY_GEMMA_LOGIT_SCALE = "text_encoders.gemma2_2b.logit_scale"
QKV = ("to_q", "to_k", "to_v")

# diffusers -> original, applied to the part of a key after the block index (or to the whole key outside blocks)
OUTSIDE_BLOCKS = {"time_caption_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
                  "time_caption_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
                  "time_caption_embed.caption_embedder.": "cap_embedder.",
                  "norm_out.linear_1.": "final_layer.adaLN_modulation.1.",
                  "norm_out.linear_2.": "final_layer.linear.", "x_embedder.": "x_embedder."}
IN_BLOCK = {"attn.norm_q.": "attention.q_norm.", "attn.norm_k.": "attention.k_norm.",
            "attn.to_out.0.": "attention.out.", "feed_forward.linear_1.": "feed_forward.w1.",
            "feed_forward.linear_2.": "feed_forward.w2.", "feed_forward.linear_3.": "feed_forward.w3.",
            "norm1.linear.": "adaLN_modulation.1.", "norm1.norm.": "attention_norm1.", "norm1.": "attention_norm1.",
            "norm2.": "attention_norm2.", "ffn_norm1.": "ffn_norm1.", "ffn_norm2.": "ffn_norm2."}
BLOCKS = ("noise_refiner.", "context_refiner.", "layers.")


def transformer_key_to_original(key: str) -> str:
    """One diffusers key (or module name) -> its original name; q/k/v map to the fused `attention.qkv`."""
    for diffusers, original in OUTSIDE_BLOCKS.items():
        if key.startswith(diffusers):
            return original + key[len(diffusers):]
    for block in BLOCKS:
        if key.startswith(block):
            index, rest = key[len(block):].split(".", 1)
            if rest.startswith(tuple(f"attn.{p}." for p in QKV)):
                return f"{block}{index}.attention.qkv.{rest.rsplit('.', 1)[-1]}"
            for diffusers, original in IN_BLOCK.items():  # ordered: norm1.linear/norm1.norm before norm1
                if rest.startswith(diffusers):
                    return f"{block}{index}.{original}{rest[len(diffusers):]}"
    raise KeyError(f"Lumina-2 key {key!r} has no place in the original layout.")


def transformer_to_original(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        original = transformer_key_to_original(key)
        if ".attention.qkv." in original:
            fused.setdefault(original, {})[key.split(".attn.")[1].split(".")[0]] = value
        else:
            out[original] = value
    for original, parts in fused.items():
        out[original] = torch.cat([parts[p] for p in QKV], dim=0)
    width = state_dict["x_embedder.weight"].shape[0]
    out["norm_final.weight"] = torch.ones(width, dtype=state_dict["x_embedder.weight"].dtype,
                                          device=state_dict["x_embedder.weight"].device)
    return out


def transformer_from_original(checkpoint: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """The inverse, for the original layout with or without ComfyUI's `model.diffusion_model.` prefix."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    sizes = [config["num_attention_heads"] * head_dim] + [config["num_kv_heads"] * head_dim] * 2
    inverse = {original: diffusers for diffusers, original in IN_BLOCK.items() if diffusers != "norm1.norm."}
    out = {}
    for key, value in checkpoint.items():
        key = key.removeprefix(COMFY_MODEL_PREFIX)
        if key == "norm_final.weight":
            continue
        block = next((b for b in BLOCKS if key.startswith(b)), None)
        if block is None:
            diffusers = next(d for d, o in OUTSIDE_BLOCKS.items() if key.startswith(o))
            out[diffusers + key[len(OUTSIDE_BLOCKS[diffusers]):]] = value
            continue
        index, rest = key[len(block):].split(".", 1)
        if rest.startswith("attention.qkv."):
            param = rest.rsplit(".", 1)[-1]
            for name, part in zip(QKV, torch.split(value, sizes, dim=0), strict=True):
                out[f"{block}{index}.attn.{name}.{param}"] = part
            continue
        original = next(o for o in inverse if rest.startswith(o))
        diffusers = inverse[original]
        if block != "context_refiner." and diffusers == "norm1.":
            diffusers = "norm1.norm."  # blocks with modulation wrap their first norm
        out[f"{block}{index}.{diffusers}{rest[len(original):]}"] = value
    return out
