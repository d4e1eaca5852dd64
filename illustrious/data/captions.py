"""The caption pipeline: a sample's caption variants -> the one prompt it trains on this time.

A sample may carry several captions (e.g. `tags` and `sentence`); one is picked by configured
probabilities, and with probability `dropout` the prompt is emptied so the model also learns the
unconditional prediction that classifier-free guidance needs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping


class CaptionPipeline:
    def __init__(self, styles: Mapping[str, float] | None = None, dropout: float = 0.1):
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"captions.dropout must be in [0, 1], got {dropout}")
        self.styles = dict(styles or {})
        if any(p < 0 for p in self.styles.values()) or (self.styles and sum(self.styles.values()) <= 0):
            raise ValueError(f"captions.styles must be non-negative weights with a positive sum, got {self.styles}")
        self.dropout = dropout

    def __call__(self, captions: str | Mapping[str, str], rng: random.Random | None = None) -> str:
        rng = rng or random
        if rng.random() < self.dropout:
            return ""
        if isinstance(captions, str):
            return captions
        available = {k: w for k, w in self.styles.items() if captions.get(k)} if self.styles else dict.fromkeys(captions, 1.0)
        if not available:
            available = {k: 1.0 for k, v in captions.items() if v}
        if not available:
            return ""
        keys = list(available)
        return captions[rng.choices(keys, weights=[available[k] for k in keys])[0]]
