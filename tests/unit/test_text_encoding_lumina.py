"""Lumina's Gemma prompts against diffusers' Lumina2Pipeline.encode_prompt, built from our own tiny parts.

The bug this pins: an empty prompt (a dropped caption, the default negative prompt) must be encoded bare,
not as `system prompt + " <Prompt Start> "`.
"""

import pytest
import torch

from illustrious.backbones import LuminaBackbone, PixelAutoencoder
from illustrious.backbones.system_prompts import SYSTEM_PROMPTS, resolve_system_prompt, with_system_prompt
from illustrious.errors import ConfigError

TINY_GEMMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16)
TINY_DIT = dict(sample_size=8, hidden_size=48, num_layers=1, num_refiner_layers=1, num_attention_heads=2,
                num_kv_heads=1, multiple_of=16, axes_dim_rope=[8, 8, 8], axes_lens=[300, 32, 32])


@pytest.fixture(scope="module")
def parts():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    torch.manual_seed(0)
    backbone = LuminaBackbone.from_config(PixelAutoencoder(factor=2), "gemma_tiny", transformer=TINY_DIT,
                                          text_encoder=TINY_GEMMA)
    backbone.eval()
    encoder = backbone.text_encoders["gemma"]
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=16, sample_size=16)
    pipe = Lumina2Pipeline(transformer=backbone.denoiser, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                           text_encoder=encoder.model, tokenizer=encoder.tokenizer)
    return backbone, pipe


def real(states, mask, row):
    return states[row][mask[row].bool()]


@torch.no_grad()
def test_prompts_match_lumina2pipeline_and_empty_is_bare(parts):
    backbone, pipe = parts
    prompt = "1girl, solo, red hair"
    ref, ref_mask, ref_neg, ref_neg_mask = pipe.encode_prompt(prompt, negative_prompt="", device="cpu")
    ours = backbone.encode_text([prompt, ""])
    assert torch.equal(ours.mask[0].sum(), ref_mask[0].sum())
    torch.testing.assert_close(real(ours.tokens, ours.mask, 0), real(ref, ref_mask, 0), rtol=1e-5, atol=1e-5)
    # the empty prompt: diffusers' negative "" is bare (just <bos>), and so is ours
    assert int(ref_neg_mask.sum()) == int(ours.mask[1].sum()) == 1
    torch.testing.assert_close(real(ours.tokens, ours.mask, 1), real(ref_neg, ref_neg_mask, 0), rtol=1e-5, atol=1e-5)
    # ... which is not what "system prompt <Prompt Start> " encodes (the old behaviour)
    wrapped, wrapped_mask = pipe.encode_prompt("", do_classifier_free_guidance=False, device="cpu")[:2]
    assert int(wrapped_mask.sum()) > 1


@torch.no_grad()
def test_selectable_system_prompt_matches_diffusers(parts):
    backbone, pipe = parts
    encoder = backbone.text_encoders["gemma"]
    old = encoder.system_prompt
    try:
        encoder.system_prompt = resolve_system_prompt("dense_caption")
        ours_states, ours_mask = encoder(["a cat"])
        ref, ref_mask = pipe.encode_prompt("a cat", do_classifier_free_guidance=False, device="cpu",
                                           system_prompt=SYSTEM_PROMPTS["dense_caption"])[:2]
        torch.testing.assert_close(real(ours_states, ours_mask, 0), real(ref, ref_mask, 0), rtol=1e-5, atol=1e-5)
    finally:
        encoder.system_prompt = old


def test_system_prompt_choices_and_join():
    assert resolve_system_prompt("diffusers").startswith("You are an assistant designed to generate superior")
    assert resolve_system_prompt("none") == resolve_system_prompt("") == ""
    custom = "You draw anime pictures from tags."
    assert resolve_system_prompt(custom) == custom
    with pytest.raises(ConfigError, match="dense_caption"):
        resolve_system_prompt("dense_captions")  # a typo must not become the system prompt
    assert with_system_prompt("SYS", "a cat") == "SYS <Prompt Start> a cat"
    assert with_system_prompt("SYS", "") == with_system_prompt("SYS", "  ") == ""
    assert with_system_prompt("", "a cat") == "a cat"
    # a non-empty negative prompt gets the system prompt (Lumina-Image-2.0 sample.py), like any prompt
    assert with_system_prompt("SYS", "blurry") == "SYS <Prompt Start> blurry"
