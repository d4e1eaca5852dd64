"""Per-sample randomness: every caption draw comes from (seed, epoch, sample index), never a global RNG.

The same triple always gives the same caption (on any rank, in any worker, after a resume); different
samples, epochs or seeds give independent streams. The triple is packed into one integer (64 bits each),
which seeds Python's Mersenne Twister directly (cheaper than hashing a string).
"""

from __future__ import annotations

import random
from _random import Random as _CRandom
from typing import NamedTuple

MASK64 = (1 << 64) - 1
_SEED = _CRandom.seed  # what random.Random.seed ends in for an int, without its per-call type checks


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
    _SEED(reuse, key_int(key))
    reuse.gauss_next = None  # as random.Random.seed does
    return reuse


class EpochIndex(int):
    """A dataset index that carries its epoch from the sampler to the dataset (and through worker queues)."""

    epoch: int

    def __new__(cls, index: int, epoch: int):
        self = super().__new__(cls, index)
        self.epoch = epoch
        return self

    def __reduce__(self):
        return EpochIndex, (int(self), self.epoch)


class EpochBatch(list):
    """A batch of dataset indices that carries its epoch (for samplers that yield whole batches)."""

    def __init__(self, indices, epoch: int):
        super().__init__(indices)
        self.epoch = epoch

    def __reduce__(self):
        return EpochBatch, (list(self), self.epoch)


def epoch_of(index_or_batch) -> int:
    return getattr(index_or_batch, "epoch", 0)
