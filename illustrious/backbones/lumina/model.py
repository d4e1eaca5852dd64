"""Lumina-Image-2.0: Next-DiT (Lumina2Transformer2DModel) + Gemma-2 + 16-channel Flux VAE (or pixel space)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from illustrious.backbones.autoencoders import LatentAutoencoder
from illustrious.backbones.base import Backbone, Conditioning
from illustrious.backbones.pretrained import diffusers_folder
from illustrious.backbones.text_encoders import (
    LUMINA_SYSTEM_PROMPT,
    GemmaPromptEncoder,
    architecture_config,
    gemma2_text_model,
    load_tokenizer,
    maybe_no_grad,
)
from illustrious.errors import ConfigError

__all__ = ["LuminaBackbone", "LUMINA_SYSTEM_PROMPT"]


class LuminaBackbone(Backbone):
    def __init__(self, transformer: nn.Module, text_encoder: GemmaPromptEncoder, autoencoder: nn.Module):
        super().__init__(autoencoder)
        self.denoiser = transformer
        self.text_encoders = nn.ModuleDict({"gemma": text_encoder})
        self.latent_channels = transformer.config.in_channels
        self.patch_size = transformer.config.patch_size
        self.pixel_multiple = autoencoder.spatial_factor * self.patch_size
        if autoencoder.latent_channels != self.latent_channels:
            raise ConfigError(f"Next-DiT takes {self.latent_channels} channels but the autoencoder makes {autoencoder.latent_channels}.")

    @classmethod
    def from_config(cls, autoencoder: nn.Module, tokenizer: str, transformer: Mapping | None = None,
                    text_encoder: Mapping | None = None, system_prompt: str = LUMINA_SYSTEM_PROMPT,
                    max_sequence_length: int = 256) -> LuminaBackbone:
        """Lumina-2's architecture with overrides; channels and caption width are derived, not configured."""
        from diffusers import Lumina2Transformer2DModel

        tok = load_tokenizer(tokenizer)
        gemma = gemma2_text_model(dict(text_encoder or {}), tok)
        config = {**architecture_config("lumina2_transformer"), **dict(transformer or {})}
        config.update(in_channels=autoencoder.latent_channels, out_channels=None, cap_feat_dim=gemma.config.hidden_size)
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        if sum(config["axes_dim_rope"]) != head_dim:
            raise ConfigError(f"backbone.transformer.axes_dim_rope {list(config['axes_dim_rope'])} must sum to the head "
                              f"dimension hidden_size / num_attention_heads = {head_dim}.")
        encoder = GemmaPromptEncoder(tok, gemma, system_prompt=system_prompt, max_length=max_sequence_length)
        return cls(Lumina2Transformer2DModel.from_config(config), encoder, autoencoder)

    @classmethod
    def from_pretrained(cls, weights: str | None = None, system_prompt: str = LUMINA_SYSTEM_PROMPT,
                        max_sequence_length: int = 256) -> LuminaBackbone:
        """Load Lumina-Image-2.0 from a local diffusers folder (transformer/, text_encoder/, tokenizer/, vae/)."""
        parts = ("transformer", "text_encoder", "tokenizer", "vae")
        root = diffusers_folder(weights, parts, "lumina", "Lumina-Image-2.0")
        from diffusers import Lumina2Transformer2DModel
        from transformers import Gemma2Model

        transformer = Lumina2Transformer2DModel.from_pretrained(root / "transformer", local_files_only=True)
        gemma = Gemma2Model.from_pretrained(root / "text_encoder", local_files_only=True)
        encoder = GemmaPromptEncoder(load_tokenizer(str(root / "tokenizer")), gemma, system_prompt, max_sequence_length)
        return cls(transformer, encoder, LatentAutoencoder.from_pretrained(str(root / "vae"), subfolder=None))

    def save_pretrained(self, root: str | Path) -> None:
        root = Path(root)
        self.denoiser.save_pretrained(root / "transformer")
        enc = self.text_encoders["gemma"]
        enc.model.save_pretrained(root / "text_encoder")
        enc.tokenizer.save_pretrained(root / "tokenizer")
        if isinstance(self.autoencoder, LatentAutoencoder):
            self.autoencoder.vae.save_pretrained(root / "vae")

    def parallel_policy(self):
        from illustrious.backbones.lumina.parallelize import POLICY

        return POLICY

    def encode_text(self, prompts: list[str]) -> Conditioning:
        with maybe_no_grad(self.text_encoders_frozen):
            tokens, mask = self.text_encoders["gemma"](prompts)
        return Conditioning(tokens=tokens, mask=mask)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, batch_extras: Mapping | None = None) -> Tensor:
        # Lumina's network runs time the other way (0 = noise) and predicts x0 - noise: flip both
        # so that, to the objective, it predicts our flow target noise - x0 at our t.
        out = self.denoiser(hidden_states=x_t, timestep=1 - t, encoder_hidden_states=cond.tokens.to(x_t.dtype),
                            encoder_attention_mask=cond.mask, return_dict=False)[0]
        return -out
