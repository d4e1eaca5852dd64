"""One image -> the pixels of its bucket: decode, orient, resize and crop, with the SDXL sizes it records."""

from __future__ import annotations

import random

import numpy as np

from illustrious.data.images.buckets import plan_crop
from illustrious.data.images.decode import crop_to_bucket, decode, open_image, upright_size
from illustrious.data.images.settings import ImageSettings

Sizes = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # original_size, crop_top_left, target_size


def load_pixels(source, orientation: int, bucket_w: int, bucket_h: int, settings: ImageSettings,
                rng: random.Random | None = None) -> tuple[np.ndarray, Sizes]:
    """Decode, orient, convert, resize and crop one image to its bucket; returns (H, W, 3) uint8 and the
    SDXL sizes (original_size, crop_top_left, target_size) as (h, w) / (top, left) pairs."""
    image = open_image(source, settings.bomb_pixels)
    with image:
        width, height = upright_size(image, orientation)
        plan = plan_crop(width, height, bucket_w, bucket_h, settings.crop, rng)
        upright = decode(image, orientation, at_least=(plan.resize_width, plan.resize_height))
        pixels = crop_to_bucket(upright, plan)
    sizes = (settings.original_size(width, height), (plan.top, plan.left), (bucket_h, bucket_w))
    return pixels, sizes


def to_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (3, H, W) uint8; `Collate` makes the batch's floats in [-1, 1] in one pass."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))
