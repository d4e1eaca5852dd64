"""SDXL: UNet + CLIP-L + OpenCLIP-bigG (+ VAE). model.py builds and runs it; key maps and parallelism policies live beside it."""

from illustrious.backbones.sdxl.model import SDXLBackbone

__all__ = ["SDXLBackbone"]
