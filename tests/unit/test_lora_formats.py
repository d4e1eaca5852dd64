"""LoRA files checked against independent loaders: diffusers' `load_lora_weights` reads our kohya-format
SDXL file and our ComfyUI-format Lumina-2 file (and the diffusers-format ones) and gives the same outputs
as our LoRA model."""

import copy

import pytest
import torch

from illustrious.config import instantiate
from illustrious.weights.lora import LoraSettings, apply_lora, export_paths, load_lora, save_lora
from illustrious.weights.lora.adapters import adapted_layers, factors


def randomize(backbone, seed=0):
    """Adapters start as a no-op (B = 0); give every factor values so the comparison means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, layer in adapted_layers(backbone):
            for t in factors(layer).values():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2)


def sdxl_inputs(unet, gen):
    x = torch.randn(2, unet.config.in_channels, 16, 16, generator=gen)
    ctx = torch.randn(2, 8, unet.config.cross_attention_dim, generator=gen)
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled_dim, generator=gen), "time_ids": torch.rand(2, 6, generator=gen) * 32}
    return (x, torch.tensor([100.0, 700.0])), {"encoder_hidden_states": ctx, "added_cond_kwargs": added}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from tests.conftest import compose_config

    cfg = compose_config(["backbone=sdxl_tiny"], tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    backbone = instantiate(cfg.backbone)
    base = copy.deepcopy(backbone)
    apply_lora(backbone, LoraSettings(rank=4, alpha=2.0, text_encoders=["text_encoders"]))
    randomize(backbone)
    return base, backbone


def diffusers_sdxl_pipeline(base):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    te1, te2 = base.text_encoders["clip_l"], base.text_encoders["clip_g"]
    return StableDiffusionXLPipeline(vae=None, text_encoder=copy.deepcopy(te1.model),
                                     text_encoder_2=copy.deepcopy(te2.model), tokenizer=te1.tokenizer,
                                     tokenizer_2=te2.tokenizer, unet=copy.deepcopy(base.denoiser),
                                     scheduler=EulerDiscreteScheduler())


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_sdxl_file_loads_in_diffusers_with_the_same_outputs(sdxl, tmp_path, fmt):
    base, ours = sdxl
    path = save_lora(ours, export_paths(tmp_path)[fmt], fmt)
    pipe = diffusers_sdxl_pipeline(base)
    pipe.load_lora_weights(str(path))

    args, kwargs = sdxl_inputs(base.denoiser, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours.denoiser(*args, **kwargs).sample
        got = pipe.unet(*args, **kwargs).sample
        plain = base.denoiser(*args, **kwargs).sample
    assert (expected - plain).abs().max() > 1e-2  # the adapters change the output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    for key, theirs in (("clip_l", pipe.text_encoder), ("clip_g", pipe.text_encoder_2)):
        with torch.no_grad():
            mine = ours.text_encoders[key].model(ids, output_hidden_states=True).hidden_states[-2]
            other = theirs(ids, output_hidden_states=True).hidden_states[-2]
            plain = base.text_encoders[key].model(ids, output_hidden_states=True).hidden_states[-2]
        assert (mine - plain).abs().max() > 1e-2
        torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-5)


def test_sdxl_kohya_keys_use_the_ldm_layout(sdxl, tmp_path):
    from safetensors import safe_open

    _, ours = sdxl
    path = save_lora(ours, tmp_path / "k.safetensors", "comfyui")
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
    # tiny UNet: levels (DownBlock2D, CrossAttn, CrossAttn), 1 layer per block -> input_blocks 3 and 5
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_middle_block_1_proj_in.lora_up.weight" in keys
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj.alpha" in keys
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert "lora_te2_text_model_encoder_layers_2_mlp_fc2.lora_up.weight" in keys
    assert not any(k.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks")) for k in keys)


@pytest.mark.parametrize("method", ["lora", "loha", "lokr"])
@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_save_then_load_restores_every_factor(tmp_path, method, fmt):
    from tests.conftest import compose_config

    cfg = compose_config(["backbone=sdxl_tiny"], tmp_path)
    settings = LoraSettings(method=method, rank=4, alpha=3.0, text_encoders=["text_encoder_2"])
    first, second = instantiate(cfg.backbone), instantiate(cfg.backbone)
    apply_lora(first, settings)
    apply_lora(second, settings)
    randomize(first)
    path = save_lora(first, tmp_path / f"{method}.safetensors", fmt)
    assert load_lora(second, path) == fmt
    pairs = list(zip(adapted_layers(first), adapted_layers(second), strict=True))
    for (_, p1, l1), (_, p2, l2) in pairs:
        assert p1 == p2
        for name, value in factors(l1).items():
            torch.testing.assert_close(factors(l2)[name], value, rtol=1e-6, atol=1e-7)


# diffusers' Lumina-2 conversion splits the fused qkv LoRA at Lumina-2's real widths (2304, 768, 768), so
# this model has the real attention width (24 x 96 -> 3 heads of 768 here) and tiny everything else.
LUMINA_REAL_ATTENTION = ["backbone=lumina_tiny", "backbone.transformer.hidden_size=2304",
                         "backbone.transformer.num_attention_heads=3", "backbone.transformer.num_kv_heads=1",
                         "backbone.transformer.axes_dim_rope=[256,256,256]", "backbone.transformer.num_layers=1",
                         "backbone.transformer.num_refiner_layers=1", "backbone.transformer.multiple_of=32",
                         "+backbone.transformer.ffn_dim_multiplier=0.01"]


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_lumina_file_loads_in_diffusers_with_the_same_outputs(tmp_path, fmt):
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline
    from safetensors import safe_open

    from tests.conftest import compose_config

    torch.manual_seed(0)
    backbone = instantiate(compose_config(LUMINA_REAL_ATTENTION, tmp_path).backbone)
    base = copy.deepcopy(backbone.denoiser)
    apply_lora(backbone, LoraSettings(rank=4, alpha=2.0))
    randomize(backbone)
    path = save_lora(backbone, export_paths(tmp_path)[fmt], fmt)
    if fmt == "comfyui":
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
        assert {"diffusion_model.layers.0.attention.qkv.lora_A.weight", "diffusion_model.layers.0.attention.out.lora_B.weight",
                "diffusion_model.noise_refiner.0.adaLN_modulation.1.lora_A.weight",
                "diffusion_model.context_refiner.0.feed_forward.w3.lora_B.weight"} <= keys
        assert not any("to_q" in k or "alpha" in k for k in keys)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, backbone.latent_channels, 8, 8, generator=gen)
    ctx = torch.randn(2, 6, base.config.cap_feat_dim, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    kwargs = {"hidden_states": x, "timestep": torch.tensor([0.2, 0.9]), "encoder_hidden_states": ctx,
              "encoder_attention_mask": mask, "return_dict": False}
    with torch.no_grad():
        plain = base(**kwargs)[0]
        pipe = Lumina2Pipeline(transformer=base, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                               text_encoder=None, tokenizer=None)
        pipe.load_lora_weights(str(path))
        expected = backbone.denoiser(**kwargs)[0]
        got = pipe.transformer(**kwargs)[0]
    assert (expected - plain).abs().max() > 1e-2  # the adapters change the output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    again = instantiate(compose_config(LUMINA_REAL_ATTENTION, tmp_path).backbone)
    apply_lora(again, LoraSettings(rank=4, alpha=2.0))
    load_lora(again, path)  # the fused qkv splits back into the rank-4 q, k, v adapters
    for (_, _, l1), (_, _, l2) in zip(adapted_layers(backbone), adapted_layers(again), strict=True):
        for name, value in factors(l1).items():
            torch.testing.assert_close(factors(l2)[name], value, rtol=1e-5, atol=1e-6)
