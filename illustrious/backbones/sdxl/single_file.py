"""SDXL from one file in the original (sgm/ldm) layout: UNet, CLIP-L, OpenCLIP-bigG and the VAE, with the
architectures shipped in the package (or a diffusers folder's configs, for other sizes)."""

from __future__ import annotations

from pathlib import Path

from illustrious.backbones.pretrained import build_loaded, component_config
from illustrious.backbones.sdxl import state_dict_adapter as adapter
from illustrious.backbones.text_encoders import load_tokenizer
from illustrious.errors import ConfigError
from illustrious.weights import markers
from illustrious.weights.safe_read import read_weights

# SDXL's real tokenizers ship in the package (illustrious/backbones/tokenizers, scripts/build_clip_tokenizer.py).
SHIPPED_TOKENIZERS = {"tokenizer": "clip_l", "tokenizer_2": "clip_g"}


def tokenizer_folder(explicit: str | None, config_dir: str | None, subfolder: str):
    """The tokenizer named by `backbone.tokenizer_*`, else `config`'s `<subfolder>/`, else SDXL's own (shipped)."""
    if explicit:
        return load_tokenizer(explicit)
    if config_dir and (Path(config_dir).expanduser() / subfolder).is_dir():
        return load_tokenizer(str(Path(config_dir).expanduser() / subfolder))
    return load_tokenizer(SHIPPED_TOKENIZERS[subfolder])


def load_single_file(path: Path, config_dir: str | None = None, tokenizer_1: str | None = None,
                     tokenizer_2: str | None = None, allow_pickle: bool = False):
    """(unet, clip_l, clip_g, tokenizer_1, tokenizer_2, vae, prediction type) from one file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok1 = tokenizer_folder(tokenizer_1, config_dir, "tokenizer")
    tok2 = tokenizer_folder(tokenizer_2, config_dir, "tokenizer_2")
    checkpoint, metadata = read_weights(path, allow_pickle=allow_pickle)
    if not any(k.startswith(adapter.UNET_PREFIX) for k in checkpoint):
        raise ConfigError(f"{path} has no {adapter.UNET_PREFIX}* keys: it is not an SDXL checkpoint in the original "
                          "layout (a diffusers folder is loaded from its folder; a LoRA goes to lora.*).")
    if not any(k.startswith(adapter.VAE_PREFIX) for k in checkpoint):
        raise ConfigError(f"{path} holds no VAE ({adapter.VAE_PREFIX}*); only complete single files are loaded.")
    prediction = markers.from_single_file(checkpoint.keys(), metadata, str(path))

    unet_config = component_config(config_dir, "unet", "sdxl_unet")
    vae_config = component_config(config_dir, "vae", "sdxl_vae")
    te1_config = CLIPTextConfig.from_dict(component_config(config_dir, "text_encoder", "sdxl_text_encoder"))
    te2_config = CLIPTextConfig.from_dict(component_config(config_dir, "text_encoder_2", "sdxl_text_encoder_2"))

    for tok, te_config, key in ((tok1, te1_config, "tokenizer_1"), (tok2, te2_config, "tokenizer_2")):
        if len(tok) > te_config.vocab_size:
            raise ConfigError(f"backbone.{key} has {len(tok)} tokens but the text encoder's config ({config_dir or 'SDXL'}) "
                              f"embeds {te_config.vocab_size}: give the tokenizer that belongs to these weights.")
    unet = build_loaded(lambda: UNet2DConditionModel.from_config(unet_config),
                        adapter.unet_from_original(checkpoint, unet_config), f"UNet in {path}")
    vae = build_loaded(lambda: AutoencoderKL.from_config(vae_config),
                       adapter.vae_from_original(checkpoint, vae_config), f"VAE in {path}")
    clip_l = build_loaded(lambda: CLIPTextModel(te1_config),
                          _text_state_dict(CLIPTextModel, te1_config, adapter.clip_l_from_original(checkpoint)),
                          f"CLIP-L text encoder in {path}")
    clip_g = build_loaded(lambda: CLIPTextModelWithProjection(te2_config),
                          _text_state_dict(CLIPTextModelWithProjection, te2_config,
                                           lambda model: adapter.clip_g_from_original(model, checkpoint)),
                          f"OpenCLIP-bigG text encoder in {path}")
    return unet, clip_l, clip_g, tok1, tok2, vae, prediction


def build_architecture(config_dir: str | None = None, tokenizer_1: str | None = None, tokenizer_2: str | None = None):
    """(unet, clip_l, clip_g, tokenizer_1, tokenizer_2, vae) of a single file's architecture, parameters on the
    meta device and no file read: for rebuilding a trained run whose checkpoint holds every weight."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok1 = tokenizer_folder(tokenizer_1, config_dir, "tokenizer")
    tok2 = tokenizer_folder(tokenizer_2, config_dir, "tokenizer_2")
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(component_config(config_dir, "unet", "sdxl_unet"))
        vae = AutoencoderKL.from_config(component_config(config_dir, "vae", "sdxl_vae"))
        clip_l = CLIPTextModel(CLIPTextConfig.from_dict(component_config(config_dir, "text_encoder", "sdxl_text_encoder")))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(
            component_config(config_dir, "text_encoder_2", "sdxl_text_encoder_2")))
    return unet, clip_l, clip_g, tok1, tok2, vae


def _text_state_dict(cls, config, state_dict):
    """Convert for this transformers version's layout (CLIPTextModel lost its `text_model.` wrapper in 5.6);
    `state_dict` may be a function of the (empty, meta-device) model, as diffusers' OpenCLIP converter needs."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls(config)
    if callable(state_dict):
        state_dict = state_dict(model)
    return adapter.strip_text_model(state_dict, model)
