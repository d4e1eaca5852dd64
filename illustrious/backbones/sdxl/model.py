"""SDXL: UNet2DConditionModel + CLIP-L + OpenCLIP-bigG (projected) + 4-channel VAE (or pixel space)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from illustrious.backbones.architectures import architecture_with
from illustrious.backbones.autoencoders import LatentAutoencoder
from illustrious.backbones.base import Backbone, Conditioning
from illustrious.backbones.pretrained import locate_weights, refuse_nonfinite_parts
from illustrious.backbones.speed import attention_context
from illustrious.backbones.text_encoders import (
    CLIPPromptEncoder,
    clip_text_model,
    load_tokenizer,
    maybe_no_grad,
)
from illustrious.errors import ConfigError

MICRO_CONDITIONING = ("original_size", "crop_top_left", "target_size")
FOLDER_PARTS = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")


class SDXLBackbone(Backbone):
    pretrained_prediction = None  # what loaded weights say they predict (illustrious.weights.markers)
    check_prediction_type = True
    patch_size = 2  # no patches in a UNet; counts tokens as 2x2 latent patches, as Flux does, for shift schedules

    def __init__(self, unet: nn.Module, text_encoder_1: CLIPPromptEncoder, text_encoder_2: CLIPPromptEncoder,
                 autoencoder: nn.Module, mask_padding: bool = False):
        super().__init__(autoencoder)
        # True: cross-attention ignores padding (after EOS, and empty filler chunks); SDXL was trained without
        self.mask_padding = mask_padding
        self.denoiser = unet
        self.text_encoders = nn.ModuleDict({"clip_l": text_encoder_1, "clip_g": text_encoder_2})
        self.latent_channels = unet.config.in_channels
        self.pixel_multiple = autoencoder.spatial_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        if autoencoder.latent_channels != self.latent_channels:
            raise ConfigError(f"UNet takes {self.latent_channels} channels but the autoencoder makes {autoencoder.latent_channels}.")

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, autoencoder: nn.Module, tokenizer_1: str, tokenizer_2: str, unet: Mapping | None = None,
                    text_encoder_1: Mapping | None = None, text_encoder_2: Mapping | None = None,
                    tokenizer_max_length: int | None = None, max_chunks: int = 3,
                    mask_padding: bool = False, native_resolution: int | None = None, attention: str = "auto",
                    channels_last: bool = False, checkpoint_blocks: float = 0.0, compile: str = "none") -> SDXLBackbone:
        """SDXL's architecture with `unet` / `text_encoder_*` overrides (tiny flavors change only widths).

        `tokenizer_max_length` shortens the token sequence (SDXL: 77) where prompts are known to be short.
        `max_chunks` prompts longer than that (minus BOS/EOS) are encoded in up to this many chunks;
        `mask_padding` masks padding in cross-attention (see `encode_text`).

        Fields that follow from the other parts (channels, cross-attention width, the size of the added
        embedding) are derived here rather than configured, so they cannot disagree.
        """
        from diffusers import UNet2DConditionModel

        tok1, tok2 = load_tokenizer(tokenizer_1), load_tokenizer(tokenizer_2)
        if tokenizer_max_length:  # prompts are padded/truncated to this; CLIP gets as many positions
            tok1.model_max_length = tok2.model_max_length = tokenizer_max_length
        te1 = clip_text_model("sdxl_text_encoder", text_encoder_1, tok1, with_projection=False,
                              key="backbone.text_encoder_1")
        te2 = clip_text_model("sdxl_text_encoder_2", text_encoder_2, tok2, with_projection=True,
                              key="backbone.text_encoder_2")
        config = architecture_with("sdxl_unet", unet, "backbone.unet")
        config.update(
            in_channels=autoencoder.latent_channels,
            out_channels=autoencoder.latent_channels,
            cross_attention_dim=te1.config.hidden_size + te2.config.hidden_size,
            projection_class_embeddings_input_dim=te2.config.projection_dim + 6 * config["addition_time_embed_dim"],
        )
        backbone = cls(UNet2DConditionModel.from_config(config), CLIPPromptEncoder(tok1, te1, max_chunks),
                       CLIPPromptEncoder(tok2, te2, max_chunks), autoencoder, mask_padding)
        backbone.declared_native_resolution = native_resolution
        return backbone.configure_speed(attention, checkpoint_blocks, compile, channels_last=channels_last)

    @classmethod
    def from_pretrained(cls, weights: str | None = None, config: str | None = None, tokenizer_1: str | None = None,
                        tokenizer_2: str | None = None, allow_pickle: bool = False,
                        check_prediction_type: bool = True, max_chunks: int = 3,
                        mask_padding: bool = False, native_resolution: int | None = None, attention: str = "auto",
                        channels_last: bool = False, checkpoint_blocks: float = 0.0, compile: str = "none",
                        weights_in_checkpoint: bool = False) -> SDXLBackbone:
        """Load SDXL from a local diffusers folder (unet/, text_encoder{,_2}/, tokenizer{,_2}/, vae/) or from one
        file in the original layout (Illustrious XL, NoobAI; `.safetensors`, or a pickle with `allow_pickle`).

        A single file is built with the architecture shipped in the package, or `config`'s (a diffusers folder
        of another size); its tokenizers come from `tokenizer_1`/`tokenizer_2`, else `config`, else SDXL's own
        (shipped in the package). What the weights
        predict (v_pred/ztsnr keys, modelspec metadata, scheduler config) is kept in `pretrained_prediction`,
        and training refuses a different objective while `check_prediction_type` is on.

        `weights_in_checkpoint` (set when a trained run is rebuilt from its checkpoint, which holds every weight):
        a single file is not read, its architecture is built with parameters on the meta device.
        """
        from illustrious.weights import markers
        from illustrious.weights.safe_read import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX

        if weights_in_checkpoint and weights and Path(weights).suffix in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
            from illustrious.backbones.sdxl.single_file import build_architecture

            unet, te1, te2, tok1, tok2, vae = build_architecture(config, tokenizer_1, tokenizer_2)
            backbone = cls(unet, CLIPPromptEncoder(tok1, te1, max_chunks), CLIPPromptEncoder(tok2, te2, max_chunks),
                           LatentAutoencoder(vae), mask_padding)
            prediction = None  # what the file says was checked when the run trained
        elif (root := locate_weights(weights, FOLDER_PARTS, "sdxl", "illustrious-xl.safetensors")).is_file():
            from illustrious.backbones.sdxl.single_file import load_single_file

            unet, te1, te2, tok1, tok2, vae, prediction = load_single_file(root, config, tokenizer_1, tokenizer_2,
                                                                           allow_pickle)
            backbone = cls(unet, CLIPPromptEncoder(tok1, te1, max_chunks), CLIPPromptEncoder(tok2, te2, max_chunks),
                           LatentAutoencoder(vae), mask_padding)
        else:
            backbone = cls._from_folder(root, max_chunks, mask_padding)
            prediction = markers.from_diffusers_folder(root)
        backbone.pretrained_prediction = prediction
        backbone.check_prediction_type = check_prediction_type
        backbone.declared_native_resolution = native_resolution
        return backbone.configure_speed(attention, checkpoint_blocks, compile, channels_last=channels_last)

    @classmethod
    def _from_folder(cls, root: Path, max_chunks: int = 3, mask_padding: bool = False) -> SDXLBackbone:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        unet = UNet2DConditionModel.from_pretrained(root / "unet", local_files_only=True)
        te1 = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True)
        te2 = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2", local_files_only=True)
        tok1, tok2 = load_tokenizer(str(root / "tokenizer")), load_tokenizer(str(root / "tokenizer_2"))
        vae = LatentAutoencoder.from_pretrained(str(root / "vae"), subfolder=None)
        refuse_nonfinite_parts({"unet": unet, "text_encoder": te1, "text_encoder_2": te2, "vae": vae}, root)
        return cls(unet, CLIPPromptEncoder(tok1, te1, max_chunks), CLIPPromptEncoder(tok2, te2, max_chunks), vae,
                   mask_padding)

    def original_state_dict(self) -> dict:
        """The single-file state dict in the original layout (see state_dict_adapter)."""
        from illustrious.backbones.sdxl.state_dict_adapter import to_original

        vae = self.autoencoder.vae if isinstance(self.autoencoder, LatentAutoencoder) else None
        return to_original(self.denoiser, self.text_encoders["clip_l"].model, self.text_encoders["clip_g"].model, vae)

    def save_pretrained(self, root: str | Path) -> None:
        """Write a diffusers-layout folder that `from_pretrained` (and diffusers) can read back."""
        root = Path(root)
        self.denoiser.save_pretrained(root / "unet")
        for sub, name in (("", "clip_l"), ("_2", "clip_g")):
            enc = self.text_encoders[name]
            enc.model.save_pretrained(root / f"text_encoder{sub}")
            enc.tokenizer.save_pretrained(root / f"tokenizer{sub}")
        if isinstance(self.autoencoder, LatentAutoencoder):
            self.autoencoder.vae.save_pretrained(root / "vae")

    def configure_speed(self, attention: str = "auto", checkpoint_blocks: float = 0.0, compile: str = "none",
                        channels_last: bool = False) -> SDXLBackbone:
        """`Backbone.configure_speed`, and `channels_last`: the UNet's weights and inputs in NHWC memory
        layout, which cuDNN's convolutions on tensor cores prefer."""
        self.channels_last = channels_last
        if channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
        return super().configure_speed(attention, checkpoint_blocks, compile)

    def parallel_policy(self):
        from illustrious.backbones.sdxl.parallelize import POLICY

        return POLICY

    # -- contract ---------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> Conditioning:
        """Both towers over the same chunks: (B, 77 n, 768 + 1280) states, bigG's pooled from chunk 1.

        A batch has as many chunks as its longest prompt (up to `max_chunks`); with `mask_padding` the mask
        is True at BOS, tokens and EOS of real chunks, else None (every position attended, as SDXL trained).
        """
        encoders = self.text_encoders["clip_l"], self.text_encoders["clip_g"]
        n_chunks = max(max(enc.chunks(prompts).counts) for enc in encoders)
        with maybe_no_grad(self.text_encoder_frozen("clip_l")):
            tokens_l, _, mask_l = encoders[0](prompts, n_chunks)
        with maybe_no_grad(self.text_encoder_frozen("clip_g")):
            tokens_g, pooled, mask_g = encoders[1](prompts, n_chunks)
        mask = (mask_l | mask_g) if self.mask_padding else None
        return Conditioning(tokens=torch.cat([tokens_l, tokens_g], dim=-1), mask=mask, pooled=pooled)

    def time_ids(self, x_t: Tensor, batch_extras: Mapping | None) -> Tensor:
        """SDXL micro-conditioning (original size, crop top-left, target size), (B, 6) in pixels as (h, w)."""
        n = x_t.shape[0]
        f = self.autoencoder.spatial_factor
        size = torch.tensor([x_t.shape[-2] * f, x_t.shape[-1] * f], dtype=torch.float32)
        defaults = {"original_size": size, "crop_top_left": torch.zeros(2), "target_size": size}
        parts = []
        for key in MICRO_CONDITIONING:
            value = batch_extras.get(key) if batch_extras else None
            value = defaults[key] if value is None else torch.as_tensor(value, dtype=torch.float32)
            parts.append(value.to(x_t.device).reshape(-1, 2).expand(n, 2))
        return torch.cat(parts, dim=1).to(x_t.dtype)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, batch_extras: Mapping | None = None) -> Tensor:
        added = {"text_embeds": cond.pooled.to(x_t.dtype), "time_ids": self.time_ids(x_t, batch_extras)}
        if getattr(self, "channels_last", False):
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        # The UNet was trained on discrete steps k = 1000 t (ARCHITECTURE.md, "The time convention").
        with attention_context(self.attention):
            return self.denoiser(x_t, 1000 * t, encoder_hidden_states=cond.tokens.to(x_t.dtype),
                                 encoder_attention_mask=cond.mask, added_cond_kwargs=added, return_dict=False)[0]
