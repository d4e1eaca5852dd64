"""diffusers' AutoencoderKL with the latent scale and shift of its model family applied."""

from __future__ import annotations

from torch import Tensor, nn

from illustrious.backbones.architectures import architecture_with


class LatentAutoencoder(nn.Module):
    """encode: pixels in [-1, 1] -> (z - shift) * scale; decode inverts it.

    SDXL's VAE: scale 0.13025, no shift. Flux's VAE (Lumina-2): 16 channels, scale 0.3611, shift 0.1159.
    """

    def __init__(self, vae: nn.Module, sample: bool = True):
        super().__init__()
        self.vae = vae
        self.sample = sample  # draw from the posterior (as the reference training scripts do) or take its mode
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, pixels: Tensor) -> Tensor:
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        z = posterior.sample() if self.sample else posterior.mode()
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode((latents / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample

    @classmethod
    def from_architecture(cls, name: str, sample: bool = True, **overrides) -> LatentAutoencoder:
        """Randomly initialised autoencoder of a shipped architecture (`sdxl_vae`, `flux_vae`); an override set
        to None keeps the architecture's value."""
        from diffusers import AutoencoderKL

        overrides = {k: v for k, v in overrides.items() if v is not None}
        return cls(AutoencoderKL.from_config(architecture_with(name, overrides, "backbone.autoencoder")), sample=sample)

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = "vae", **kwargs) -> LatentAutoencoder:
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_pretrained(path, subfolder=subfolder, local_files_only=True), **kwargs)
