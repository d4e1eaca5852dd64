"""Image inputs every metric here accepts, and reading a folder of reference images.

Metrics take a batch as (N, 3, H, W): uint8 in 0..255, or floating-point pixels in [-1, 1] (what
`illustrious.sampling.generate` returns). `as_uint8` brings either to uint8, rounding as the PNG writer does,
so a metric gives the same value on generated pixels and on the PNGs written from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def as_uint8(images: Tensor) -> Tensor:
    """(N, 3, H, W) uint8, or float pixels in [-1, 1] -> (N, 3, H, W) uint8 (same device)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected images as a (N, 3, H, W) tensor, got {shape}.")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"Images must be uint8 (0..255) or float pixels in [-1, 1], got {images.dtype}.")
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def as_hwc_numpy(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) uint8 or [-1, 1] pixels -> (N, H, W, 3) uint8 numpy (for the numpy-defined statistics)."""
    return as_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (hidden files left out)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_images(files: list[Path], size: tuple[int, int] | None = None) -> tuple[list[Tensor], list[Path]]:
    """Decode image files to (3, H, W) uint8 tensors (resized to `size` = (height, width) if given).
    Files that do not decode are skipped and returned as the second list, so a caller can count them."""
    from PIL import Image, UnidentifiedImageError

    images, skipped = [], []
    for file in files:
        try:
            with Image.open(file) as image:
                rgb = image.convert("RGB")
                if size is not None and rgb.size != (size[1], size[0]):
                    rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
                images.append(torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous())
        except (OSError, UnidentifiedImageError, ValueError):
            skipped.append(file)
    return images, skipped
