"""Preprocessing and bucket settings shared by every real-image source (folder, WebDataset, latent cache).

The values are the flat `data.*` keys of `conf/data/images/default.yaml`, which `conf/data/folder.yaml` and
`conf/data/webdataset.yaml` both compose (`BucketedDataModule.from_config` gathers them); they are checked here, when the data module is built, so a bad value stops the run before any work starts and the
message names the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from illustrious.errors import ConfigError

CROP_MODES = ("center", "random")
MEGAPIXEL = 1_000_000


@dataclass(frozen=True)
class ImageSettings:
    """How an image becomes a training sample, relative to the backbone's native resolution.

    Sizes left as None follow `native_resolution` (the backbone's training side, `backbone.native_resolution`):
    buckets cover `bucket_area` times its area (Illustrious v2.0's 0.15-2.25 around a 1024^2 native), images
    shorter than 3/4 of it are dropped, bucket levels step by 1/8 of it. So SDXL and Lumina-2 (1024) get the
    paper's settings and a tiny backbone (32) small buckets, with no extra flags. Absolute values win.
    """

    native_resolution: int = 1024  # the backbone's native square side (pixels)
    min_side: int | None = None  # images whose shorter side is smaller are dropped; None = 3/4 of native
    max_aspect: float = 10.0  # images (and buckets) more elongated than 1:max_aspect are dropped
    max_megapixels: float = 4.0  # larger images count as downscaled to this pixel budget (original_size)
    bomb_megapixels: float = 178.0  # a header claiming more pixels is refused as a decompression bomb
    bucket_area: tuple[float, float] = (0.15, 2.25)  # bucket pixel-area range, as fractions of the native area
    bucket_megapixels: tuple[float, float] | None = None  # the same range in megapixels; set, it wins over bucket_area
    bucket_step: int | None = None  # bucket levels every this many pixels of side; None = 1/8 of native
    bucket_multiple: int | None = None  # bucket sides are multiples of this; None = the backbone's pixel_multiple
    crop: str = "center"  # center or random

    def __post_init__(self):
        if not (isinstance(self.native_resolution, int) and self.native_resolution >= 8):
            raise ConfigError(f"data.native_resolution={self.native_resolution}: must be a whole number >= 8 (pixels); "
                              "it follows backbone.native_resolution.")
        native = self.native_resolution
        low_high = tuple(float(v) for v in self.bucket_area)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise ConfigError(f"data.bucket_area={list(low_high)}: give [min, max] fractions of the native area "
                              "with 0 < min <= max, e.g. [0.15, 2.25].")
        object.__setattr__(self, "bucket_area", low_high)
        if self.bucket_megapixels is None:  # resolve the relative defaults once, so every reader sees pixels
            area = native * native / MEGAPIXEL
            object.__setattr__(self, "bucket_megapixels", (low_high[0] * area, low_high[1] * area))
        if self.min_side is None:
            object.__setattr__(self, "min_side", round(0.75 * native))
        if self.bucket_step is None:
            object.__setattr__(self, "bucket_step", max(1, native // 8))
        object.__setattr__(self, "bucket_megapixels", tuple(float(v) for v in self.bucket_megapixels))
        low_high = self.bucket_megapixels
        if self.min_side < 1:
            raise ConfigError(f"data.min_side={self.min_side}: must be >= 1 pixel.")
        if not self.max_aspect >= 1:
            raise ConfigError(f"data.max_aspect={self.max_aspect}: must be >= 1 (10 means up to 1:10 or 10:1).")
        if not self.max_megapixels > 0:
            raise ConfigError(f"data.max_megapixels={self.max_megapixels}: must be > 0.")
        if not self.bomb_megapixels >= self.max_megapixels:
            raise ConfigError(f"data.bomb_megapixels={self.bomb_megapixels} must be >= data.max_megapixels="
                              f"{self.max_megapixels}: it is the size beyond which a file is refused as a bomb.")
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise ConfigError(f"data.bucket_megapixels={list(low_high)}: give [min, max] with 0 < min <= max, "
                              "e.g. [0.15, 2.25], or null to follow data.bucket_area.")
        if self.bucket_step < 1:
            raise ConfigError(f"data.bucket_step={self.bucket_step}: must be >= 1 pixel.")
        if self.bucket_multiple is not None and self.bucket_multiple < 1:
            raise ConfigError(f"data.bucket_multiple={self.bucket_multiple}: must be >= 1, or null to use the "
                              "backbone's pixel_multiple.")
        if self.crop not in CROP_MODES:
            raise ConfigError(f"data.crop={self.crop!r}: must be one of {', '.join(CROP_MODES)}.")

    @classmethod
    def split(cls, keys: Mapping) -> tuple[ImageSettings, dict]:
        """(the settings named in `keys`, the other keys): flat config keys -> one settings object."""
        names = {f.name for f in fields(cls)}
        mine = {k: v for k, v in keys.items() if k in names}
        return cls(**mine), {k: v for k, v in keys.items() if k not in names}

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * MEGAPIXEL)

    @property
    def bomb_pixels(self) -> int:
        return int(self.bomb_megapixels * MEGAPIXEL)

    @property
    def bucket_area_range(self) -> tuple[int, int]:
        return int(self.bucket_megapixels[0] * MEGAPIXEL), int(self.bucket_megapixels[1] * MEGAPIXEL)

    def keeps(self, width: int, height: int) -> str | None:
        """None if an image of this (oriented) size is kept, else why it is dropped."""
        if min(width, height) < self.min_side:
            return "too_small"
        if max(width, height) > self.max_aspect * min(width, height):
            return "too_elongated"
        return None

    def original_size(self, width: int, height: int) -> tuple[int, int]:
        """(h, w) of the image after the pixel-budget downscale: what SDXL's `original_size` records."""
        scale = min(1.0, math.sqrt(self.max_pixels / (width * height)))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def with_multiple(self, multiple: int) -> ImageSettings:
        return ImageSettings(**{**asdict(self), "bucket_multiple": multiple})

    def fingerprint(self) -> dict:
        """What decides a sample's pixels and sizes (part of the latent-cache key)."""
        keys = ("max_megapixels", "bucket_megapixels", "bucket_step", "bucket_multiple", "max_aspect", "crop")
        return {k: getattr(self, k) for k in keys}
