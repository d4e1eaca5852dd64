"""The shapes judge: four figures per sample, read from pixels against the stored layout of its prompt.

- **composition**: each prompted colour lands at the prompted position (it is the most frequent shape colour
  in the named region and covers at least `min_fraction` of it);
- **shape**: the coloured blob at each prompted position (the largest connected component of the region's
  dominant shape colour) has the prompted geometry, circle / square / triangle (`classify_shape`);
- **background**: the most frequent background colour among the pixels that are not shape-coloured is the
  prompted one;
- **cleanliness**: the standard deviation, in 0-255 levels, of the background pixels, i.e. everything
  except the shapes' blobs and a one-pixel ring around them (the anti-aliased edges). Leftover noise and
  speckles raise it; a clean render scores about 0. It depends on the image alone, so its value against
  mismatched prompts equals its value against the right ones: it has no chance level.

Every pixel is first assigned its nearest palette colour. `judge` returns per-image values (a torchmetrics
Metric can sum them); `summarize` reduces them, weighting composition and shape by each image's shape
count, so they are fractions of prompted shapes. Chance is measured, not assumed: the same judge applied to
images paired with other samples' layouts (`chance_scores`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from illustrious.data.sources.shapes import BACKGROUNDS, SHAPE_COLOURS, SHAPES, Layout, region

_NAMES = [*SHAPE_COLOURS, *BACKGROUNDS]
_PALETTE = np.array([*SHAPE_COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)
_N_SHAPE_COLOURS = len(SHAPE_COLOURS)
FIGURES = ("composition", "shape", "background", "cleanliness")

# Two geometric features separate the rendered shapes (all point-up triangles), measured at 32x32 on 3000
# training images (4471 shapes) after nearest-colour labelling:
#   fill ratio (blob area / bounding box): squares 0.967-1.0, circles 0.60-0.90 (ideal pi/4), triangles 0.50-0.64;
#   top share (blob pixels above the box's middle row / pixels off it): triangles 0.21-0.31, circles 0.44-0.56,
#   squares 0.49-0.51. The cuts sit in the gaps.
TRIANGLE_MAX_TOP = 0.37
SQUARE_MIN_FILL = 0.935
MIN_BLOB_PIXELS = 4  # a blob smaller than this has no shape


def to_uint8(images) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] (tensor or array) -> (N, H, W, 3) uint8."""
    arr = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images, dtype=np.float32)
    return ((arr.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def colour_map(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest palette colour."""
    x = image.astype(np.float32)
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2; |x|^2 is the same for every p
    return ((_PALETTE**2).sum(-1) - 2 * x @ _PALETTE.T).argmin(-1)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean mask: (H, W) int labels, 0 = outside, 1.. = components.

    A flood fill over the set pixels only (a few hundred in a 32x32 sample): faster here than array passes."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int64)
    todo = set(zip(*np.nonzero(mask), strict=True))
    current = 0
    while todo:
        current += 1
        stack = [todo.pop()]
        while stack:
            y, x = stack.pop()
            labels[y, x] = current
            for n in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if n in todo:
                    todo.remove(n)
                    stack.append(n)
    return labels


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels = connected_components(mask)
    if labels.max() == 0:
        return mask & False
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def classify_shape(blob: np.ndarray) -> str | None:
    """circle / square / triangle from a blob's top share and fill ratio; None for a blob too small."""
    ys, xs = np.nonzero(blob)
    if len(ys) < MIN_BLOB_PIXELS:
        return None
    fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    middle = (ys.min() + ys.max()) / 2
    above, below = (ys < middle).sum(), (ys > middle).sum()
    if above / max(above + below, 1) < TRIANGLE_MAX_TOP:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def _region_counts(labels: np.ndarray, box) -> tuple[np.ndarray, int]:
    x0, y0, x1, y1 = box
    counts = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=len(_NAMES))[:_N_SHAPE_COLOURS]
    return counts, (x1 - x0) * (y1 - y0)


def shapes_placed(image: np.ndarray, layout: Layout, min_fraction: float = 0.05) -> list[bool]:
    """Per prompted shape: is its colour the dominant shape colour at its position (composition)?"""
    return _placed(colour_map(image), layout, min_fraction)


def _placed(labels: np.ndarray, layout: Layout, min_fraction: float = 0.05) -> list[bool]:
    h, w = labels.shape
    placed = []
    for spec in layout.shapes:
        counts, area = _region_counts(labels, region(spec.position, w, h))
        want = _NAMES.index(spec.colour)
        placed.append(bool(counts[want] == counts.max() and counts[want] >= min_fraction * area))
    return placed


def shapes_drawn(image: np.ndarray, layout: Layout) -> list[str | None]:
    """Per prompted shape: the geometry of the blob at its position (largest component of the region's
    dominant shape colour), whatever its colour; None where no shape colour is there."""
    return _drawn(colour_map(image), layout)


def _drawn(labels: np.ndarray, layout: Layout) -> list[str | None]:
    h, w = labels.shape
    found = []
    for spec in layout.shapes:
        x0, y0, x1, y1 = region(spec.position, w, h)
        counts, _ = _region_counts(labels, (x0, y0, x1, y1))
        if counts.max() == 0:
            found.append(None)
            continue
        found.append(classify_shape(largest_component(labels[y0:y1, x0:x1] == counts.argmax())))
    return found


def background_mask(labels: np.ndarray, min_blob_fraction: float = 0.005) -> np.ndarray:
    """Pixels outside the shapes: not within one pixel of a shape-coloured blob. Blobs under
    `min_blob_fraction` of the image are speckles and count as (unclean) background."""
    shape_pixels = labels < _N_SHAPE_COLOURS
    components = connected_components(shape_pixels)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    blobs = sizes[components] >= max(2, min_blob_fraction * labels.size)
    p = np.pad(blobs, 1)
    near = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    near |= p[:-2, :-2] | p[:-2, 2:] | p[2:, :-2] | p[2:, 2:]
    return ~near


def judge_image(image: np.ndarray, layout: Layout) -> dict[str, float]:
    """The four figures of one (H, W, 3) uint8 image; composition and shape as fractions of its shapes."""
    labels = colour_map(image)
    n = max(len(layout.shapes), 1)
    placed = _placed(labels, layout)
    drawn = _drawn(labels, layout)
    background = labels >= _N_SHAPE_COLOURS
    counts = np.bincount(labels[background].ravel(), minlength=len(_NAMES))[_N_SHAPE_COLOURS:]
    mask = background_mask(labels)
    pixels = image[mask].astype(np.float64)
    return {
        "composition": sum(placed) / n,
        "shape": sum(d == s.shape for d, s in zip(drawn, layout.shapes, strict=True)) / n,
        "background": float(counts.sum() > 0 and _NAMES[_N_SHAPE_COLOURS + counts.argmax()] == layout.background),
        # std of each channel over the background pixels, averaged; a fully covered image has no background
        "cleanliness": float(pixels.std(0).mean()) if len(pixels) > 1 else 0.0,
        "num_shapes": float(len(layout.shapes)),
    }


def judge(images, layouts: list[Layout]) -> dict[str, Tensor]:
    """Per-image figures: {composition, shape, background, cleanliness, num_shapes} -> (N,) float tensors.

    `images`: (N, H, W, 3) uint8 array, or (N, 3, H, W) pixels in [-1, 1] (tensor or float array).
    """
    if isinstance(images, torch.Tensor) or np.asarray(images).dtype != np.uint8:
        images = to_uint8(images)
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images but {len(layouts)} layouts")
    rows = [judge_image(image, layout) for image, layout in zip(images, layouts, strict=True)]
    keys = (*FIGURES, "num_shapes")
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in keys}


def summarize(scores: dict[str, Tensor]) -> dict[str, float]:
    """Reduce per-image figures: composition and shape over all prompted shapes, the others over images."""
    n = scores["num_shapes"]
    out = {k: float((scores[k] * n).sum() / n.sum().clamp(min=1)) for k in ("composition", "shape")}
    out.update({k: float(scores[k].mean()) for k in ("background", "cleanliness")})
    return out


def mismatched(layouts: list[Layout]) -> list[Layout]:
    """Every image paired with another sample's layout (a cyclic shift): the judge's chance pairing."""
    return layouts[1:] + layouts[:1]


def chance_scores(images, layouts: list[Layout]) -> dict[str, float]:
    """The judge's figures against mismatched prompts (cleanliness is the same by construction)."""
    return summarize(judge(images, mismatched(layouts)))


def composition_accuracy(images: np.ndarray, layouts: list[Layout]) -> float:
    """Fraction of prompted shapes whose colour lands at the prompted position; images (N, H, W, 3) uint8."""
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images but {len(layouts)} layouts")
    hits = [ok for image, layout in zip(images, layouts, strict=True) for ok in shapes_placed(image, layout)]
    return float(np.mean(hits)) if hits else 0.0


def chance_accuracy(images: np.ndarray, layouts: list[Layout]) -> float:
    """Composition accuracy when every image is paired with another sample's layout."""
    return composition_accuracy(images, mismatched(layouts))


__all__ = ["FIGURES", "SHAPES", "judge", "summarize", "chance_scores", "classify_shape", "composition_accuracy"]
