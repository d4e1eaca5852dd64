"""Lumina-2 from one file: Alpha-VLLM's consolidated checkpoint (the transformer alone, in the original layout;
Illustrious-Lumina v0.03) or ComfyUI's single file (`model.diffusion_model.*` with, in the all-in-one file,
`vae.*` and `text_encoders.gemma2_2b.*`). Parts the file lacks come from `base`, a Lumina-2 diffusers folder."""

from __future__ import annotations

from pathlib import Path

from illustrious.backbones.lumina import state_dict_adapter as adapter
from illustrious.backbones.pretrained import build_loaded, component_config
from illustrious.backbones.sdxl.state_dict_adapter import vae_from_original
from illustrious.backbones.text_encoders import load_tokenizer
from illustrious.errors import ConfigError
from illustrious.weights.safe_read import read_weights


def _base_part(base: str | None, subfolder: str, path: Path, what: str) -> Path:
    folder = Path(base).expanduser() / subfolder if base else None
    if folder is None or not folder.is_dir():
        raise ConfigError(f"{path} holds no {what}: set backbone.base=<a Lumina-Image-2.0 diffusers folder> with a "
                          f"{subfolder}/ subfolder to take it from there.")
    return folder


def gemma_tokenizer(tokenizer: str | None, base: str | None, path: Path):
    """Gemma-2's tokenizer is not shipped (no package registry carries it; its terms are Gemma's): it comes
    from `backbone.tokenizer` or `backbone.base`'s tokenizer/."""
    if tokenizer:
        return load_tokenizer(tokenizer)
    folder = Path(base).expanduser() / "tokenizer" if base else None
    if folder is None or not folder.is_dir():
        raise ConfigError(
            f"{path} holds no tokenizer and Gemma-2's is not shipped with the package: set "
            "backbone.tokenizer=<folder> to the tokenizer/ folder of a Lumina-Image-2.0 diffusers copy "
            "(Alpha-VLLM/Lumina-Image-2.0/tokenizer, with tokenizer.json or tokenizer.model and tokenizer_config.json; "
            "google/gemma-2-2b's own folder works too), or backbone.base=<that Lumina-Image-2.0 diffusers folder>.")
    return load_tokenizer(str(folder))


def load_single_file(path: Path, base: str | None = None, tokenizer: str | None = None, allow_pickle: bool = False):
    """(transformer, gemma, tokenizer, vae) from one file, the rest from `base`."""
    from diffusers import AutoencoderKL, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = gemma_tokenizer(tokenizer, base, path)
    checkpoint, _ = read_weights(path, allow_pickle=allow_pickle)
    other = (adapter.COMFY_VAE_PREFIX, "text_encoders.")
    model_keys = {k: v for k, v in checkpoint.items() if not k.startswith(other)}
    if "cap_embedder.0.weight" not in {k.removeprefix(adapter.COMFY_MODEL_PREFIX) for k in model_keys}:
        raise ConfigError(f"{path} is not a Lumina-2 checkpoint in the original or ComfyUI layout (no cap_embedder).")
    config = component_config(base, "transformer", "lumina2_transformer")
    transformer = build_loaded(lambda: Lumina2Transformer2DModel.from_config(config),
                               adapter.transformer_from_original(model_keys, config), f"Next-DiT in {path}")

    gemma_keys = {k.removeprefix(adapter.COMFY_GEMMA_PREFIX): v for k, v in checkpoint.items()
                  if k.startswith(adapter.COMFY_GEMMA_PREFIX)}
    if gemma_keys:
        gemma_config = Gemma2Config.from_dict(component_config(base, "text_encoder", "gemma2_text_encoder"))
        gemma = build_loaded(lambda: Gemma2Model(gemma_config), gemma_keys, f"Gemma-2 in {path}")
    else:
        gemma = Gemma2Model.from_pretrained(_base_part(base, "text_encoder", path, "text encoder"), local_files_only=True)

    if any(k.startswith(adapter.COMFY_VAE_PREFIX) for k in checkpoint):
        vae_config = component_config(base, "vae", "flux_vae")
        vae = build_loaded(lambda: AutoencoderKL.from_config(vae_config),
                           vae_from_original(checkpoint, vae_config, prefix=adapter.COMFY_VAE_PREFIX), f"VAE in {path}")
    else:
        vae = AutoencoderKL.from_pretrained(_base_part(base, "vae", path, "VAE"), local_files_only=True)
    return transformer, gemma, tok, vae
