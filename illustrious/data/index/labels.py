"""What an image says about itself in words: the one rule for "has a caption", and its caption variants.

The rule: a caption with text other than whitespace, or at least one tag in a prompt category (character,
copyright, artist, general; meta tags such as `absurdres` are not prompts). The scan reports images that
fail it, the folder selection drops them (on the manifest's columns, vectorised) and the WebDataset stream
drops them per sample; all three ask this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from illustrious.data.index.sidecars import CAPTION_CATEGORIES, tags_caption


def has_caption(caption: str | None, tags: Mapping[str, list[str]]) -> bool:
    """The caption rule for one image (`tags` by category, as sidecars.Metadata holds them)."""
    return bool(caption and caption.strip()) or any(tags.get(c) for c in CAPTION_CATEGORIES)


def has_caption_rows(table) -> np.ndarray:
    """The same rule over a manifest table (`caption` and `tags_<category>` columns), one bool per row."""
    import pyarrow.compute as pc  # here: scan workers import this module and need no Arrow

    ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table.column("caption"))), 0), False)
    for category in CAPTION_CATEGORIES:
        ok = pc.or_(ok, pc.fill_null(pc.greater(pc.list_value_length(table.column(f"tags_{category}")), 0), False))
    return ok.to_numpy(zero_copy_only=False)


def caption_variants(caption: str | None, tags: Mapping[str, list[str]], txt_style: str) -> dict[str, str] | str:
    """What the caption pipeline chooses from: the tag prompt and the written caption, under their styles."""
    variants = {}
    tag_prompt = tags_caption(tags)
    if tag_prompt:
        variants["tags"] = tag_prompt
    if caption:
        variants[txt_style] = caption  # an explicit caption wins over tags under the same style
    return variants or ""
