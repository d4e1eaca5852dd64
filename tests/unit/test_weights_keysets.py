"""Real-size key sets, built on the meta device (no weights allocated): our exports of the shipped SDXL and
Lumina-2 architectures are exactly what diffusers' original-layout converters read, every tensor included,
and diffusers' own format detection recognises them."""

from __future__ import annotations

import pytest

from illustrious.backbones.architectures import architecture_config


def empty(make):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return make()


def shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def sdxl():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = empty(lambda: UNet2DConditionModel.from_config(architecture_config("sdxl_unet")))
    vae = empty(lambda: AutoencoderKL.from_config(architecture_config("sdxl_vae")))
    clip_l = empty(lambda: CLIPTextModel(CLIPTextConfig.from_dict(architecture_config("sdxl_text_encoder"))))
    clip_g = empty(lambda: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(architecture_config("sdxl_text_encoder_2"))))
    return unet, vae, clip_l, clip_g


def test_sdxl_export_is_the_original_key_set(sdxl):
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    from illustrious.backbones.sdxl import state_dict_adapter as adapter

    unet, vae, clip_l, clip_g = sdxl
    exported = adapter.to_original(unet, clip_l, clip_g, vae)
    assert all(t.device.type == "meta" for k, t in exported.items() if not k.endswith(("position_ids", "logit_scale")))
    assert infer_diffusers_model_type(exported) == "xl_base"
    assert CHECKPOINT_KEY_NAMES["xl_base"] in exported
    # diffusers' converters rebuild every parameter of every component, with its shape
    assert shapes(adapter.unet_from_original(exported, unet.config)) == shapes(unet.state_dict())
    assert shapes(adapter.vae_from_original(exported, vae.config)) == shapes(vae.state_dict())
    assert shapes(adapter.strip_text_model(adapter.clip_l_from_original(exported), clip_l)) == shapes(clip_l.state_dict())
    assert shapes(adapter.strip_text_model(adapter.clip_g_from_original(clip_g, exported), clip_g)) == shapes(clip_g.state_dict())
    # one original tensor per parameter (bigG's q, k, v fused into one), plus the two that ComfyUI writes
    # and no converter needs: nothing left out, nothing invented
    prefixes = (adapter.UNET_PREFIX, adapter.VAE_PREFIX, adapter.CLIP_L_PREFIX, adapter.CLIP_G_PREFIX)
    assert all(k.startswith(prefixes) for k in exported)
    # SDXL base 1.0: 1680 UNet tensors, 248 VAE, 197 CLIP-L (with position_ids), 390 bigG (with logit_scale)
    counts = {p: sum(k.startswith(p) for k in exported) for p in prefixes}
    layers = clip_g.config.num_hidden_layers
    assert counts[adapter.UNET_PREFIX] == len(unet.state_dict())
    assert counts[adapter.VAE_PREFIX] == len(vae.state_dict())
    assert counts[adapter.CLIP_L_PREFIX] == len(clip_l.state_dict()) + 1
    assert counts[adapter.CLIP_G_PREFIX] == len(clip_g.state_dict()) - 4 * layers + 1
    assert counts == {adapter.UNET_PREFIX: 1680, adapter.VAE_PREFIX: 248, adapter.CLIP_L_PREFIX: 197,
                      adapter.CLIP_G_PREFIX: 390}


def test_sdxl_original_names_match_comfyui_and_ldm_conventions(sdxl):
    from illustrious.backbones.sdxl import state_dict_adapter as adapter

    unet, vae, clip_l, clip_g = sdxl
    keys = set(adapter.to_original(unet, clip_l, clip_g, vae))
    for key in ("model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",   # upsampler behind an attention
                "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.proj_out.weight",
                "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection",
                "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.bias"):
        assert key in keys, key


def test_lumina_export_is_the_original_key_set():
    from diffusers import Lumina2Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers, infer_diffusers_model_type

    from illustrious.backbones.lumina import state_dict_adapter as adapter

    model = empty(lambda: Lumina2Transformer2DModel.from_config(architecture_config("lumina2_transformer")))
    original = adapter.transformer_to_original(model.state_dict())
    comfy = {adapter.COMFY_MODEL_PREFIX + k: v for k, v in original.items()}
    assert infer_diffusers_model_type(original) == infer_diffusers_model_type(comfy) == "lumina2"
    # diffusers' converter (written for the real 2.6B model) rebuilds every parameter, with its shape
    assert shapes(convert_lumina2_to_diffusers(dict(original))) == shapes(model.state_dict())
    assert shapes(adapter.transformer_from_original(comfy, model.config)) == shapes(model.state_dict())
    assert original["layers.25.attention.qkv.weight"].shape == (2304 + 768 + 768, 2304)
    assert {"norm_final.weight", "cap_embedder.0.weight", "final_layer.adaLN_modulation.1.weight",
            "context_refiner.1.attention_norm2.weight", "noise_refiner.1.adaLN_modulation.1.bias"} <= set(original)
