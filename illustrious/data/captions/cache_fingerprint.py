"""What a text-embedding cache was built from, as plain JSON: compared field by field before it is used.

A cached entry is only valid for the text encoders that made it (weights, tokenizer, max length, chunking,
system prompt, padding mask), the caption pipeline that drew its captions (class and settings) and the data
(a signature the data module gives). Weights are hashed (blake2b over every tensor's bytes, a few seconds
for SDXL's 0.8 B text-encoder parameters), so a fine-tuned encoder with the same architecture is told apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

ENCODER_SETTINGS = ("max_chunks", "system_prompt", "max_length")  # prompt encoders' attributes that shape output


def plain(value):
    """A JSON-ready, order-stable description of settings (sets sorted; objects by their attributes)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])) if not str(k).startswith("_")}
    if isinstance(value, set | frozenset):
        return sorted(repr(plain(v)) for v in value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "__dict__"):
        return {"class": type(value).__name__, **plain(vars(value))}
    return repr(value)


def weights_digest(module: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> dict:
    vocab = sorted(tokenizer.get_vocab().items())
    h = hashlib.blake2b(repr(vocab).encode(), digest_size=16)
    return {"class": type(tokenizer).__name__, "vocab": h.hexdigest(), "model_max_length": tokenizer.model_max_length,
            "special_ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
            "padding_side": tokenizer.padding_side}


def encoder_fingerprint(backbone) -> dict:
    """The text side of a backbone: each prompt encoder's settings, tokenizer and weights."""
    out = {"backbone": type(backbone).__name__, "mask_padding": bool(getattr(backbone, "mask_padding", False))}
    for name, encoder in backbone.text_encoders.items():
        model = getattr(encoder, "model", encoder)
        entry = {"class": type(encoder).__name__, "model": type(model).__name__, "weights": weights_digest(model)}
        entry.update({k: plain(getattr(encoder, k)) for k in ENCODER_SETTINGS if hasattr(encoder, k)})
        if hasattr(encoder, "tokenizer"):
            entry["tokenizer"] = tokenizer_digest(encoder.tokenizer)
        out[name] = entry
    return out


def cache_description(backbone, pipeline, data_signature: str) -> dict:
    """Everything besides (variants, seed, samples) a cache must have been built from."""
    return {"text_encoders": encoder_fingerprint(backbone),
            "captions": {"class": type(pipeline).__name__, **plain(vars(pipeline))},
            "data": data_signature}
