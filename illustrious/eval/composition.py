"""Composition accuracy: does each prompted colour land at the prompted position?

Judged from pixels against the stored layout of held-out shapes prompts: every pixel is assigned its
nearest palette colour; a shape counts as placed when its colour is the most frequent shape colour in
the named region and covers at least `min_fraction` of it. Chance is measured, not assumed: the same
judge applied to images paired with other samples' layouts (`chance_accuracy`).
"""

from __future__ import annotations

import numpy as np

from illustrious.data.sources.shapes import BACKGROUNDS, SHAPE_COLOURS, Layout, region

_NAMES = [*SHAPE_COLOURS, *BACKGROUNDS]
_PALETTE = np.array([*SHAPE_COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)
_N_SHAPE_COLOURS = len(SHAPE_COLOURS)


def to_uint8(images) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] (tensor or array) -> (N, H, W, 3) uint8."""
    arr = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images, dtype=np.float32)
    return ((arr.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def colour_map(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest palette colour."""
    d = ((image[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def shapes_placed(image: np.ndarray, layout: Layout, min_fraction: float = 0.05) -> list[bool]:
    h, w = image.shape[:2]
    labels = colour_map(image)
    placed = []
    for spec in layout.shapes:
        x0, y0, x1, y1 = region(spec.position, w, h)
        counts = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=len(_NAMES))[:_N_SHAPE_COLOURS]
        want = _NAMES.index(spec.colour)
        area = (x1 - x0) * (y1 - y0)
        placed.append(bool(counts[want] == counts.max() and counts[want] >= min_fraction * area))
    return placed


def composition_accuracy(images: np.ndarray, layouts: list[Layout]) -> float:
    """Fraction of prompted shapes whose colour lands at the prompted position; images (N, H, W, 3) uint8."""
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images but {len(layouts)} layouts")
    hits = [ok for image, layout in zip(images, layouts, strict=True) for ok in shapes_placed(image, layout)]
    return float(np.mean(hits)) if hits else 0.0


def chance_accuracy(images: np.ndarray, layouts: list[Layout]) -> float:
    """The judge's score when every image is paired with another sample's layout (a cyclic shift)."""
    return composition_accuracy(images, layouts[1:] + layouts[:1])
