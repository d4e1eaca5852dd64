"""Lumina-Image-2.0: Next-DiT + Gemma-2 (+ Flux VAE). model.py builds and runs it; key maps and parallelism policies live beside it."""

from illustrious.backbones.lumina.model import LuminaBackbone

__all__ = ["LuminaBackbone"]
