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

from collections.abc import Mapping, Sequence
from typing import Any

from illustrious.data.captions.source import record_from_row
from illustrious.data.index.labels import caption_variants
from illustrious.data.index.sidecars import TAG_CATEGORIES

SIZE_KEYS = ("original_size", "crop_top_left", "target_size")
# what a sample's caption record is built from besides `tags_<category>`: a manifest row's columns (with the
# annotation command's derived columns where annotated), and the same fields of a shard sample's JSON
CAPTION_FIELDS = ("caption", "rating", "score_tag", "year_tag", "control_tags")
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


def caption_record(row: Mapping, txt_style: str = "tags", tags: Mapping[str, list[str]] | None = None) -> dict:
    """The caption record of one sample, from a manifest row or a shard sample's metadata flattened to the same
    columns (`caption`, `rating`, `tags_<category>`, and the derived `score_tag`, `year_tag`, `control_tags`
    where annotated): tags by section for captions=illustrious/bigasp, and the plain variants for plain. Every
    source builds its records here, so a folder and the shards written from it give the same captions."""
    tags = tags if tags is not None else {c: row.get(f"tags_{c}") or [] for c in TAG_CATEGORIES}
    return record_from_row(row, txt_style, variants=caption_variants(row.get("caption"), tags, txt_style))
