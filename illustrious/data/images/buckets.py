"""Aspect-ratio buckets over a pixel-area range, nearest-bucket assignment, and crop planning.

Buckets come in levels: square-equivalent sides from sqrt(min area) to sqrt(max area) at multiples of
`step` pixels (plus both ends), so 0.15-2.25 MP with step 128 gives levels at 387, 512, 640, ..., 1408
and 1500 px. At each level the buckets are the largest (w, h), both multiples of `multiple`, with
w * h <= the level's area and an aspect ratio within 1:max_aspect. An image goes to the largest level
whose area does not exceed its own (after the pixel budget) by more than `UPSCALE_TOLERANCE` per side,
so it is not upscaled beyond that (832x1216, SDXL's classic size, still lands at 1024^2), and within that level to the bucket nearest its aspect ratio in log space. Assignment is
vectorised: a million images take well under a second.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from illustrious.errors import ConfigError

# An image may be upscaled by up to 5% per side to reach the next bucket level: without it, images a hair
# below a level (832x1216 is 0.96 of 1024^2) would drop a whole level and lose 20% of their pixels.
UPSCALE_TOLERANCE = 1.05


@dataclass(frozen=True)
class CropPlan:
    """Resize the upright image to (resize_width, resize_height), then crop the bucket at (top, left)."""

    resize_width: int
    resize_height: int
    top: int
    left: int
    width: int  # the bucket
    height: int


def plan_crop(width: int, height: int, bucket_width: int, bucket_height: int, mode: str = "center",
              rng: random.Random | None = None) -> CropPlan:
    """Scale so the image covers the bucket (aspect ratio kept), then crop the overflow on one axis."""
    scale = max(bucket_width / width, bucket_height / height)
    rw = max(bucket_width, round(width * scale))
    rh = max(bucket_height, round(height * scale))
    spare_y, spare_x = rh - bucket_height, rw - bucket_width
    if mode == "random":
        rng = rng or random  # the process's generator: seeded by Lightning in the main process and in workers
        top, left = rng.randint(0, spare_y), rng.randint(0, spare_x)
    else:
        top, left = spare_y // 2, spare_x // 2
    return CropPlan(rw, rh, top, left, bucket_width, bucket_height)


def level_sides(min_area: int, max_area: int, step: int) -> list[float]:
    low, high = math.sqrt(min_area), math.sqrt(max_area)
    # inner levels closer than half a step to an end would duplicate it
    inner = [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)
             if low + step / 2 <= k * step <= high - step / 2]
    return sorted({low, *inner, high})


def level_buckets(area: float, multiple: int, max_aspect: float) -> list[tuple[int, int]]:
    """The largest (w, h) multiples of `multiple` with w * h <= area, aspect within 1:max_aspect."""
    candidates = set()
    w = multiple
    while w * multiple <= area:
        h = int(area // w) // multiple * multiple
        if h >= multiple and max(w, h) <= max_aspect * min(w, h):
            candidates.update({(w, h), (h, w)})
        w += multiple
    # keep only the frontier: no other bucket at this level is at least as large on both sides
    best_h: dict[int, int] = {}
    best_w: dict[int, int] = {}
    for w, h in candidates:
        best_h[w] = max(best_h.get(w, 0), h)
        best_w[h] = max(best_w.get(h, 0), w)
    return sorted((w, h) for w, h in candidates if best_h[w] == h and best_w[h] == w)


class BucketSet:
    """All buckets of a pixel-area range; `assign` maps image sizes to bucket indices."""

    def __init__(self, min_area: int, max_area: int, step: int, multiple: int, max_aspect: float):
        self.multiple = multiple
        self.sizes: list[tuple[int, int]] = []  # (w, h) per bucket index
        level_first: list[int] = []
        self.level_areas: list[float] = []
        seen: set[tuple[int, int]] = set()
        self._level_of: dict[tuple[int, int], float] = {}
        for side in level_sides(min_area, max_area, step):
            found = [b for b in level_buckets(side * side, multiple, max_aspect) if b not in seen]
            seen.update(found)
            if not found:
                continue
            level_first.append(len(self.sizes))
            self.level_areas.append(side * side)
            self._level_of.update(dict.fromkeys(found, side * side))
            # within a level, sorted by aspect ratio so the nearest one is a binary search away
            self.sizes.extend(sorted(found, key=lambda b: b[0] / b[1]))
        if not self.sizes:
            raise ConfigError(
                f"No bucket fits: data.bucket_megapixels allows at most {max_area} pixels, but the smallest "
                f"bucket at data.bucket_multiple={multiple} is {multiple}x{multiple}. Raise the bucket area "
                "range or lower the multiple.")
        self._bounds = [*level_first, len(self.sizes)]
        self._log_aspect = np.log(np.array([w / h for w, h in self.sizes]))

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def level_of(self, size: tuple[int, int]) -> float:
        """The pixel area of the level a bucket belongs to."""
        return self._level_of[tuple(size)]

    def assign(self, widths, heights, max_pixels: int | None = None) -> np.ndarray:
        """Bucket index per image (upright sizes); areas above `max_pixels` count as downscaled to it."""
        widths = np.asarray(widths, dtype=np.float64)
        heights = np.asarray(heights, dtype=np.float64)
        area = widths * heights
        if max_pixels is not None:
            area = np.minimum(area, max_pixels)
        area = area * UPSCALE_TOLERANCE**2
        level = np.searchsorted(np.asarray(self.level_areas), area, side="right") - 1
        level = np.clip(level, 0, len(self.level_areas) - 1)  # below the smallest level: its buckets, upscaled
        log_aspect = np.log(widths / heights)
        out = np.empty(len(widths), dtype=np.int32)
        for k in range(len(self.level_areas)):
            chosen = np.nonzero(level == k)[0]
            if not len(chosen):
                continue
            start, stop = self._bounds[k], self._bounds[k + 1]
            out[chosen] = start + nearest(self._log_aspect[start:stop], log_aspect[chosen])
        return out

    def most_square(self) -> tuple[int, int]:
        """The bucket nearest 1:1 at the top level (a default sampling size)."""
        start, stop = self._bounds[-2], self._bounds[-1]
        return self.sizes[start + int(nearest(self._log_aspect[start:stop], np.zeros(1))[0])]


def nearest(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of the nearest value in an ascending array, per query."""
    right = np.clip(np.searchsorted(sorted_values, queries), 1, max(len(sorted_values) - 1, 1))
    left = right - 1
    if len(sorted_values) == 1:
        return np.zeros(len(queries), dtype=np.int64)
    pick_left = np.abs(queries - sorted_values[left]) <= np.abs(sorted_values[right] - queries)
    return np.where(pick_left, left, right)
