"""`captions=plain`: pick one of a sample's caption strings by weight; drop the prompt at a rate.

The pipeline of the synthetic-shapes default run: a sample carries e.g. `tags` and `sentence` captions, one is
chosen by `styles` weights, and with probability `dropout` the prompt is emptied so the model also learns
the unconditional prediction that classifier-free guidance needs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from illustrious.data.captions.rng import CaptionKey, caption_rng
from illustrious.data.captions.source import named_captions


def draw_rng(key: CaptionKey | random.Random | None, reuse: random.Random | None = None) -> random.Random:
    """The RNG of one caption draw: from its key (reseeding `reuse` if given); a caller's own RNG; or fresh
    entropy (never the global one)."""
    if isinstance(key, random.Random):
        return key
    return caption_rng(key, reuse) if key is not None else random.Random()


class PlainCaptions:
    def __init__(self, styles: Mapping[str, float] | None = None, dropout: float = 0.1):
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"captions.dropout must be in [0, 1], got {dropout}")
        self.styles = dict(styles or {})
        if any(p < 0 for p in self.styles.values()) or (self.styles and sum(self.styles.values()) <= 0):
            raise ValueError(f"captions.styles must be non-negative weights with a positive sum, got {self.styles}")
        self.dropout = dropout
        self.augments = dropout > 0 or len(self.styles) > 1

    def __call__(self, source, key: CaptionKey | random.Random | None = None) -> str:
        rng = draw_rng(key)
        if rng.random() < self.dropout:
            return ""
        if isinstance(source, str):
            return source
        captions = named_captions(source)
        available = {k: w for k, w in self.styles.items() if captions.get(k)} if self.styles else dict.fromkeys(captions, 1.0)
        if not available:
            available = dict.fromkeys(captions, 1.0)
        if not available:
            return ""
        keys = list(available)
        return captions[rng.choices(keys, weights=[available[k] for k in keys])[0]]


CaptionPipeline = PlainCaptions  # the name data modules and configs used before the package existed
