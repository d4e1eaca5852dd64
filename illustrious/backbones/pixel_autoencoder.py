"""A parameter-free, exactly invertible "autoencoder" for tiny flavors: space-to-depth.

It lets a tiny model train and sample in a latent-shaped space whose decoding needs no trained VAE, so
samples are visible (and judgeable) after a few minutes of CPU training.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class PixelAutoencoder(nn.Module):
    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        if factor < 1:
            raise ValueError(f"PixelAutoencoder factor must be >= 1, got {factor}")
        self.factor = factor
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor**2

    @property
    def spatial_factor(self) -> int:
        return self.factor

    def encode(self, pixels: Tensor) -> Tensor:
        h, w = pixels.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"Image size {h}x{w} is not a multiple of the pixel autoencoder factor {self.factor}.")
        return (F.pixel_unshuffle(pixels, self.factor) - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return F.pixel_shuffle(latents / self.scaling_factor + self.shift_factor, self.factor)
