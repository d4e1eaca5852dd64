"""Lumina-2 LoRA keys in ComfyUI's native layout: `diffusion_model.<original Lumina module>.lora_A.weight`.

ComfyUI maps LoRA keys onto its own (original Lumina-Image-2.0) module names, where q, k and v are one
fused `attention.qkv` linear; the diffusers/peft layout (`transformer.layers.0.attn.to_q...`) does not
load there (ComfyUI issue 7502). diffusers reads this layout back with
`_convert_non_diffusers_lumina2_lora_to_diffusers`, which takes only `lora_A`/`lora_B` (no alpha): the
scale alpha / rank is therefore folded into `lora_B`.

q, k and v adapters (A_q, B_q), ... become one adapter on qkv with A = [A_q; A_k; A_v] and
B = blockdiag(B_q, B_k, B_v), rank 3r: B A = blockdiag(B_q A_q, B_k A_k, B_v A_v) exactly.
The names are derived from the full-checkpoint key map (backbones/lumina/state_dict_adapter.py), restricted
to the blocks' linears (attention, feed-forward, adaLN), the part diffusers' Lumina-2 LoRA converter is tested on.
"""

from __future__ import annotations

from illustrious.backbones.lumina.state_dict_adapter import BLOCKS, QKV, transformer_key_to_original
from illustrious.errors import ConfigError

PREFIX = "diffusion_model."


def native_path(path: str) -> str:
    """diffusers Lumina2Transformer2DModel module path -> original Lumina module path (q/k/v -> attention.qkv)."""
    if path.startswith(BLOCKS):
        try:
            return transformer_key_to_original(path + ".weight").removesuffix(".weight")
        except KeyError:
            pass
    raise ConfigError(f"LoRA on Lumina module {path!r} has no ComfyUI name here: the ComfyUI format covers the "
                      "attention, feed-forward and adaLN linears of the blocks; save it in the diffusers format instead.")


def qkv_part(path: str) -> tuple[str, int] | None:
    """(block path, 0/1/2) for a q/k/v projection, else None."""
    block, _, name = path.rpartition(".attn.")
    return (block, QKV.index(name)) if name in QKV else None
