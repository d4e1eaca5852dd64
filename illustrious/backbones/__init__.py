from illustrious.backbones.base import Backbone, Conditioning
from illustrious.backbones.lumina import LuminaBackbone
from illustrious.backbones.pixel_autoencoder import PixelAutoencoder
from illustrious.backbones.sdxl import SDXLBackbone

__all__ = ["Backbone", "Conditioning", "LuminaBackbone", "PixelAutoencoder", "SDXLBackbone"]
