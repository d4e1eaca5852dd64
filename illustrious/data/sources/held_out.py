"""Held-out (validation) splits the data sources share: which items are held out, and their fixed batches.

An item is held out by a stable hash of its key (a folder image's relative path), never by its position or the
run's seed: adding images never moves an existing one between the splits, and runs with different seeds are
validated on the same images. Validation batches are fixed (one bucket each, in a fixed order, epoch 0 for the
per-sample caption and crop draws) and dealt to ranks in turn; every rank gets the same number of batches
(the last ones repeat the first, as the training sampler pads), so sharded models never wait on a rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from illustrious.data.captions.rng import EpochBatch
from illustrious.errors import ConfigError

SALT = b"illustrious-held-out:"
VALIDATION_EPOCH = 0  # the epoch held-out samples draw their caption and crop from


def key_hash(key: str) -> float:
    """A stable number in [0, 1) for an item key (BLAKE2b, the same on every machine and Python)."""
    digest = hashlib.blake2b(SALT + key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def check_split(fraction: float, count: int) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.val_fraction={fraction}: must be in [0, 1) (0 = no held-out split).")
    if count < 0:
        raise ConfigError(f"data.val_count={count}: must be >= 0 (0 = no held-out split).")
    if fraction and count:
        raise ConfigError(f"data.val_fraction={fraction} and data.val_count={count} are both set: set one to 0.")


def held_out_mask(keys: Sequence[str], fraction: float = 0.0, count: int = 0) -> np.ndarray:
    """Which items are held out: those whose key hashes below `fraction` (each item's membership depends on its
    key alone), or the `count` items with the smallest hashes (an exact number). Both 0: none."""
    check_split(fraction, count)
    hashes = np.array([key_hash(k) for k in keys], dtype=np.float64)
    if count:
        if count >= len(keys):
            raise ConfigError(f"data.val_count={count} would hold out all {len(keys)} images: lower it.")
        mask = np.zeros(len(keys), dtype=bool)
        mask[np.argsort(hashes, kind="stable")[:count]] = True
        return mask
    return hashes < fraction


def validation_batches(bucket_ids: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1,
                       ) -> list[EpochBatch]:
    """This rank's fixed validation batches: indices grouped by bucket (buckets and indices in ascending order),
    cut into batches of `batch_size` (a bucket's last batch may be shorter), dealt to ranks in turn."""
    bucket_ids = np.asarray(bucket_ids)
    batches = []
    for bucket in np.unique(bucket_ids):
        members = np.flatnonzero(bucket_ids == bucket)
        batches.extend(members[i:i + batch_size].tolist() for i in range(0, len(members), batch_size))
    if not batches:
        return []
    per_rank = -(-len(batches) // world_size)
    batches = (batches * world_size)[:per_rank * world_size]  # pad with the first batches
    return [EpochBatch(b, VALIDATION_EPOCH) for b in batches[rank::world_size]]
