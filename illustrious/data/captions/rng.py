"""Per-sample randomness: every caption draw comes from (seed, epoch, sample index), never a global RNG.

The same triple always gives the same caption (on any rank, in any worker, after a resume); different
samples, epochs or seeds give independent streams. The triple is packed into one integer (64 bits each),
which seeds Python's Mersenne Twister directly (cheaper than hashing a string).
"""

from __future__ import annotations

import random
from typing import NamedTuple

MASK64 = (1 << 64) - 1


class CaptionKey(NamedTuple):
    seed: int
    epoch: int
    index: int


def key_int(key: CaptionKey) -> int:
    seed, epoch, index = key
    return ((seed & MASK64) << 128) | ((epoch & MASK64) << 64) | (index & MASK64)


def caption_rng(key: CaptionKey, reuse: random.Random | None = None) -> random.Random:
    """The RNG of `key`; `reuse` (an RNG the caller owns) is reseeded instead of allocating one."""
    if reuse is None:
        return random.Random(key_int(key))
    reuse.seed(key_int(key))
    return reuse
