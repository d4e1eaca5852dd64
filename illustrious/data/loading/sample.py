"""The sample record: the dict every data source yields and `Collate` turns into a batch.

    pixels          (3, H, W) uint8 in [0, 255] or float in [-1, 1]  }  exactly one of the two
    latents         (C, h, w) any float dtype (from a latent cache)  }
    captions        caption variants by style ({"tags": ..., "sentence": ...}) or one string; the caption
                    pipeline picks the prompt
    original_size   (h, w) of the source image (after the pixel budget)   } SDXL's micro-conditioning
    crop_top_left   (top, left) of the crop                                }
    target_size     (h, w) of the bucket                                   }
    ...             anything else a source knows (path, tags, rating, score, created, layout): batches
                    carry it as a list
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SIZE_KEYS = ("original_size", "crop_top_left", "target_size")
Sizes = tuple[Sequence[int], Sequence[int], Sequence[int]]  # original_size, crop_top_left, target_size


def sample_record(captions: dict[str, str] | str, sizes: Sizes, *, pixels: Any = None, latents: Any = None,
                  **extra: Any) -> dict:
    """The record of one sample: its image (pixels or latents), captions, SDXL sizes, and `extra` fields."""
    if (pixels is None) == (latents is None):
        raise ValueError("a sample carries either pixels or latents (exactly one)")
    original, crop, target = sizes
    image = {"pixels": pixels} if pixels is not None else {"latents": latents}
    return {**image, "captions": captions, "original_size": tuple(original), "crop_top_left": tuple(crop),
            "target_size": tuple(target), **extra}
