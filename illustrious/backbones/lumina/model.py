"""Lumina-Image-2.0: Next-DiT (Lumina2Transformer2DModel) + Gemma-2 + 16-channel Flux VAE (or pixel space)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from illustrious.backbones.architectures import architecture_with
from illustrious.backbones.autoencoders import LatentAutoencoder
from illustrious.backbones.base import Backbone, Conditioning
from illustrious.backbones.pretrained import locate_weights, refuse_nonfinite_parts
from illustrious.backbones.speed import attention_context
from illustrious.backbones.text_encoders import (
    LUMINA_SYSTEM_PROMPT,
    GemmaPromptEncoder,
    gemma2_text_model,
    load_tokenizer,
    maybe_no_grad,
)
from illustrious.errors import ConfigError

__all__ = ["LuminaBackbone", "LUMINA_SYSTEM_PROMPT"]
FOLDER_PARTS = ("transformer", "text_encoder", "tokenizer", "vae")


class LuminaBackbone(Backbone):
    pretrained_prediction = None  # what loaded weights say they predict (illustrious.weights.markers)
    check_prediction_type = True

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
                    text_encoder: Mapping | None = None, system_prompt: str = "diffusers",
                    max_sequence_length: int = 256, native_resolution: int | None = None,
                    attention: str = "auto", checkpoint_blocks: float = 0.0, compile: str = "none") -> LuminaBackbone:
        """Lumina-2's architecture with overrides; channels and caption width are derived, not configured.

        `system_prompt`: a name from `illustrious.backbones.system_prompts` or a custom sentence."""
        from diffusers import Lumina2Transformer2DModel

        tok = load_tokenizer(tokenizer)
        gemma = gemma2_text_model(text_encoder, tok)
        config = architecture_with("lumina2_transformer", transformer, "backbone.transformer")
        config.update(in_channels=autoencoder.latent_channels, out_channels=None, cap_feat_dim=gemma.config.hidden_size)
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        if sum(config["axes_dim_rope"]) != head_dim:
            raise ConfigError(f"backbone.transformer.axes_dim_rope {list(config['axes_dim_rope'])} must sum to the head "
                              f"dimension hidden_size / num_attention_heads = {head_dim}.")
        encoder = GemmaPromptEncoder(tok, gemma, system_prompt=system_prompt, max_length=max_sequence_length)
        backbone = cls(Lumina2Transformer2DModel.from_config(config), encoder, autoencoder)
        backbone.declared_native_resolution = native_resolution
        return backbone.configure_speed(attention, checkpoint_blocks, compile)

    @classmethod
    def from_pretrained(cls, weights: str | None = None, system_prompt: str = "diffusers",
                        max_sequence_length: int = 256, base: str | None = None, tokenizer: str | None = None,
                        allow_pickle: bool = False, check_prediction_type: bool = True,
                        native_resolution: int | None = None, attention: str = "auto", checkpoint_blocks: float = 0.0,
                        compile: str = "none") -> LuminaBackbone:
        """Load Lumina-Image-2.0 from a local diffusers folder (transformer/, text_encoder/, tokenizer/, vae/), or
        from one file: the original repository's consolidated checkpoint (transformer only; `.safetensors`, or
        `.pth` with `allow_pickle`) or ComfyUI's single file. What a file lacks (text encoder, VAE, tokenizer)
        comes from `base`, a diffusers folder; architectures are the shipped ones unless `base` has its own."""
        from illustrious.weights.markers import PredictionType

        root = locate_weights(weights, FOLDER_PARTS, "lumina", "Lumina-Image-2.0")
        if root.is_file():
            from illustrious.backbones.lumina.single_file import load_single_file

            transformer, gemma, tok, vae = load_single_file(root, base, tokenizer, allow_pickle)
        else:
            from diffusers import AutoencoderKL, Lumina2Transformer2DModel
            from transformers import Gemma2Model

            transformer = Lumina2Transformer2DModel.from_pretrained(root / "transformer", local_files_only=True)
            gemma = Gemma2Model.from_pretrained(root / "text_encoder", local_files_only=True)
            tok = load_tokenizer(str(root / "tokenizer"))
            vae = AutoencoderKL.from_pretrained(root / "vae", local_files_only=True)
            refuse_nonfinite_parts({"transformer": transformer, "text_encoder": gemma, "vae": vae}, root)
        encoder = GemmaPromptEncoder(tok, gemma, system_prompt, max_sequence_length)
        backbone = cls(transformer, encoder, LatentAutoencoder(vae))
        # Lumina-2 is a rectified-flow model (it predicts x0 - noise at reversed time; forward() flips both)
        backbone.pretrained_prediction = PredictionType("flow", False, f"{root} (Lumina-2 is a flow model)")
        backbone.check_prediction_type = check_prediction_type
        backbone.declared_native_resolution = native_resolution
        return backbone.configure_speed(attention, checkpoint_blocks, compile)

    def original_state_dict(self) -> dict:
        """The Next-DiT in the original repository's layout (consolidated checkpoint keys)."""
        from illustrious.backbones.lumina.state_dict_adapter import transformer_to_original

        return transformer_to_original(self.denoiser.state_dict())

    def comfyui_state_dict(self) -> dict:
        """ComfyUI's all-in-one layout: model.diffusion_model.*, text_encoders.gemma2_2b.*, vae.* (when there is one)."""
        import math

        import torch

        from illustrious.backbones.lumina import state_dict_adapter as adapter
        from illustrious.backbones.sdxl.state_dict_adapter import vae_to_original

        out = {adapter.COMFY_MODEL_PREFIX + k: v for k, v in self.original_state_dict().items()}
        out.update({adapter.COMFY_GEMMA_PREFIX + k: v for k, v in self.text_encoders["gemma"].model.state_dict().items()})
        out[adapter.COMFY_GEMMA_LOGIT_SCALE] = torch.tensor(math.log(100.0))  # as ComfyUI saves it; never read
        if isinstance(self.autoencoder, LatentAutoencoder):
            vae = self.autoencoder.vae
            out.update(vae_to_original(vae.state_dict(), vae.config, prefix=adapter.COMFY_VAE_PREFIX))
        return out

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
        with maybe_no_grad(self.text_encoder_frozen("gemma")):
            tokens, mask = self.text_encoders["gemma"](prompts)
        return Conditioning(tokens=tokens, mask=mask)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, batch_extras: Mapping | None = None) -> Tensor:
        # Lumina's network runs time the other way (0 = noise) and predicts x0 - noise: flip both
        # so that, to the objective, it predicts our flow target noise - x0 at our t.
        with attention_context(self.attention):
            out = self.denoiser(hidden_states=x_t, timestep=1 - t, encoder_hidden_states=cond.tokens.to(x_t.dtype),
                                encoder_attention_mask=cond.mask, return_dict=False)[0]
        return -out
