"""Backbones: the contract on tiny flavors, true architectures on the meta device, save/load round trips."""

import json

import pytest
import torch

from illustrious.backbones import Conditioning, LuminaBackbone, PixelAutoencoder, SDXLBackbone
from illustrious.backbones.architectures import architecture_config
from illustrious.backbones.autoencoders import LatentAutoencoder
from illustrious.config import instantiate
from illustrious.errors import ConfigError

PROMPTS = ["a red circle on the left", "blue square right, black background", ""]


def build_tiny(name, tmp_path_factory):
    from tests.conftest import compose_config

    cfg = compose_config([f"backbone={name}"], tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    return instantiate(cfg.backbone)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return build_tiny("sdxl_tiny", tmp_path_factory)


@pytest.fixture(scope="module")
def lumina(tmp_path_factory):
    return build_tiny("lumina_tiny", tmp_path_factory)


@pytest.fixture(params=["sdxl_tiny", "lumina_tiny"])
def tiny(request):
    return request.param, request.getfixturevalue(request.param.removesuffix("_tiny"))


def test_contract_shapes(tiny):
    name, bb = tiny
    cond = bb.encode_text(PROMPTS)
    assert cond.tokens.shape[0] == 3 and cond.tokens.dim() == 3
    if name == "sdxl_tiny":
        assert cond.mask is None and cond.pooled.shape == (3, 64)
        assert cond.tokens.shape[1:] == (32, 32 + 64)  # (tokenizer_max_length 32) both towers' penultimate states, concatenated
    else:
        assert cond.pooled is None and cond.mask.dtype == torch.bool
        assert cond.mask[:, 0].all() and not cond.mask[2].all()  # right padding: real tokens first
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    latents = bb.encode_image(pixels)
    assert latents.shape == (3, bb.latent_channels, 16, 16)
    torch.testing.assert_close(bb.decode(latents), pixels)
    out = bb(latents, torch.rand(3), cond)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert 32 % bb.pixel_multiple == 0


def test_parameter_groups_freeze(tiny):
    _, bb = tiny
    groups = bb.parameter_groups({"denoiser": 1e-3, "text_encoders": 0})
    assert [g["name"] for g in groups] == ["denoiser"]
    assert not any(p.requires_grad for m in bb.text_encoders.values() for p in m.parameters())
    assert bb.text_encoders_frozen and not bb.encode_text(["x"]).tokens.requires_grad
    groups = bb.parameter_groups({"denoiser": 1e-3, "text_encoders": 1e-5})
    te_groups = {"text_encoder"} if len(bb.text_encoders) == 1 else {"text_encoder_1", "text_encoder_2"}
    assert {g["name"]: g["lr"] for g in groups} == {"denoiser": 1e-3, **dict.fromkeys(te_groups, 1e-5)}
    assert bb.encode_text(["x"]).tokens.requires_grad
    assert not any(p.requires_grad for p in bb.autoencoder.parameters())
    with pytest.raises(ValueError, match="unet"):
        bb.parameter_groups({"unet": 1e-3})


def test_lumina_time_and_sign_convention(lumina):
    bb = lumina
    x, t = torch.randn(2, bb.latent_channels, 16, 16), torch.tensor([0.2, 0.7])
    cond = bb.encode_text(PROMPTS[:2])
    raw = bb.denoiser(hidden_states=x, timestep=1 - t, encoder_hidden_states=cond.tokens,
                      encoder_attention_mask=cond.mask, return_dict=False)[0]
    torch.testing.assert_close(bb(x, t, cond), -raw)


def test_sdxl_time_and_micro_conditioning(sdxl):
    bb = sdxl
    x = torch.randn(2, bb.latent_channels, 16, 16)
    extras = {"original_size": torch.tensor([[1024, 768], [40, 50]]), "crop_top_left": torch.tensor([[0, 8], [1, 2]]),
              "target_size": torch.tensor([[32, 32], [32, 32]])}
    ids = bb.time_ids(x, extras)
    assert ids.tolist() == [[1024, 768, 0, 8, 32, 32], [40, 50, 1, 2, 32, 32]]
    assert bb.time_ids(x, None).tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    cond = bb.encode_text(PROMPTS[:2])
    t = torch.tensor([0.25, 0.5])
    raw = bb.denoiser(x, torch.tensor([250.0, 500.0]), encoder_hidden_states=cond.tokens,
                      added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": ids}).sample
    torch.testing.assert_close(bb(x, t, cond, extras), raw)
    # micro-conditioning reaches the network
    assert not torch.allclose(bb(x, t, cond, extras), bb(x, t, cond, None))


def test_sdxl_tiny_has_sdxl_topology(sdxl):
    bb = sdxl
    cfg = bb.denoiser.config
    assert list(cfg.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert cfg.addition_embed_type == "text_time"
    assert type(bb.text_encoders["clip_g"].model).__name__ == "CLIPTextModelWithProjection"


def test_lumina_tiny_has_next_dit_features(lumina):
    bb = lumina
    cfg = bb.denoiser.config
    assert cfg.num_refiner_layers >= 1 and cfg.num_kv_heads < cfg.num_attention_heads and len(cfg.axes_dim_rope) == 3
    # the tiny flavour sends the bare prompt (experiments/system_prompt_study); real Lumina-2 keeps its prefix
    assert bb.text_encoders["gemma"].format("cat") == "cat"


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_true_architectures_have_published_sizes():
    from diffusers import Lumina2Transformer2DModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(architecture_config("sdxl_unet"))
        dit = Lumina2Transformer2DModel.from_config(architecture_config("lumina2_transformer"))
        sdxl_vae = LatentAutoencoder.from_architecture("sdxl_vae")
        flux_vae = LatentAutoencoder.from_architecture("flux_vae")
    assert count(unet) == 2_567_463_684
    assert round(count(dit) / 1e9, 2) == 2.61
    assert sdxl_vae.latent_channels == 4 and sdxl_vae.scaling_factor == 0.13025 and sdxl_vae.shift_factor == 0
    assert flux_vae.latent_channels == 16 and (flux_vae.scaling_factor, flux_vae.shift_factor) == (0.3611, 0.1159)
    assert sdxl_vae.spatial_factor == flux_vae.spatial_factor == 8


@pytest.mark.parametrize("name", ["sdxl", "lumina"])
def test_real_flavors_without_weights_stop_clearly(name, make_config):
    cfg = make_config(f"backbone={name}")
    with pytest.raises(ConfigError, match=f"backbone={name} needs pretrained weights.*backbone.weights="):
        instantiate(cfg.backbone)


@pytest.mark.parametrize("name", ["sdxl_tiny", "lumina_tiny"])
def test_save_and_load_back_as_diffusers_folder(name, make_config, tmp_path):
    torch.manual_seed(0)
    bb = instantiate(make_config(f"backbone={name}").backbone)
    # real flavors pair with AutoencoderKL: give the tiny model a small one so the vae/ folder round-trips too
    from diffusers import AutoencoderKL

    vae = LatentAutoencoder(AutoencoderKL(block_out_channels=(8, 8), latent_channels=bb.latent_channels,
                                          down_block_types=("DownEncoderBlock2D",) * 2,
                                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4), sample=False)
    bb.autoencoder = vae
    bb.save_pretrained(tmp_path / "model")
    cls = SDXLBackbone if name.startswith("sdxl") else LuminaBackbone
    extra = {"system_prompt": "none"} if cls is LuminaBackbone else {}  # as the tiny flavour: the bare prompt
    back = cls.from_pretrained(str(tmp_path / "model"), **extra)
    x, t = torch.randn(2, bb.latent_channels, 16, 16), torch.tensor([0.3, 0.6])
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, back.encode_text(PROMPTS[:2])), bb(x, t, bb.encode_text(PROMPTS[:2])))
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "model").rglob("*"))
    assert not any(p.suffix in {".bin", ".pt", ".ckpt"} for p in (tmp_path / "model").rglob("*"))


def test_from_pretrained_names_missing_parts(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ConfigError, match="text_encoder"):
        SDXLBackbone.from_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="not a folder"):
        LuminaBackbone.from_pretrained(str(tmp_path / "nope"))


def test_pixel_autoencoder_is_invertible_and_checks_size():
    ae = PixelAutoencoder(factor=4)
    x = torch.randn(2, 3, 16, 24)
    assert ae.encode(x).shape == (2, 48, 4, 6)
    torch.testing.assert_close(ae.decode(ae.encode(x)), x)
    with pytest.raises(ValueError, match="multiple"):
        ae.encode(torch.randn(1, 3, 10, 16))


def test_conditioning_cat_pads_and_masks():
    a = Conditioning(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    b = Conditioning(torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))
    c = Conditioning.cat([a, b])
    assert c.tokens.shape == (3, 5, 4) and c.mask.sum().item() == 2 * 3 + 5
    assert c[2:].tokens.shape == (1, 5, 4) and c.to(dtype=torch.float16).mask.dtype == torch.bool


def test_shipped_tokenizers_cover_any_text():
    from illustrious.backbones.text_encoders import load_tokenizer

    for name in ("clip_tiny", "gemma_tiny"):
        tok = load_tokenizer(name)
        text = "1girl, solo, Zürich ☃ qqq"
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids[1:-1] or name == "gemma_tiny"
        assert "zürich" in tok.decode(ids).lower()
    with pytest.raises(FileNotFoundError, match="neither a shipped tokenizer"):
        load_tokenizer("no_such_tokenizer")


def test_architecture_configs_are_json():
    from illustrious.backbones.architectures import CONFIGS_DIR

    for path in CONFIGS_DIR.glob("*.json"):
        json.loads(path.read_text())
