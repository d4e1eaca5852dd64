"""The bucket batch sampler: every batch from one bucket, seeded per epoch, sharded by rank, resumable.

Epoch e's batches are a pure function of (seed, e, bucket assignment, batch size): each bucket's members
are shuffled and cut into batches (a bucket's last, short batch is filled up with other members of the
same bucket, so every sample is seen each epoch and every batch has `batch_size` samples; or dropped
with `drop_last`), and the batch order is shuffled. Under DDP the global batch list is padded (by
repeating its first batches) or, with `drop_last`, cut to a multiple of the world size, and rank r takes
batches r, r + W, r + 2W, ...: disjoint, equal-length shares, so after k steps on every rank exactly the
first k * W global batches are done. The position is therefore one number, `offset`, which survives a
change of world size on resume.

With `chunk_counts` (a function epoch -> (N,) chunks each sample's caption needs that epoch; captions are
a pure function of (seed, epoch, index), so this is known before the epoch starts) each bucket's shuffled
members are stably sorted by chunk count before they are cut into batches: samples whose prompts need the
same number of 75-token chunks share batches, so a short prompt is not padded to a long one's chunks
(bigASP v2.5). A bucket then has at most one mixed batch per boundary between its chunk counts; the number
of batches, the order of buckets and batches and the resume position work exactly as without it.

It yields lists of indices for a dataset whose items are whole batches (DataLoader(sampler=...,
batch_size=None)). It subclasses `DistributedSampler` only so that Lightning, which wraps any other
sampler in a `DistributedSamplerWrapper` when `use_distributed_sampler=True`, leaves it alone: it already
shards by rank, and a second sharding would both drop data and break resumption.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data.distributed import DistributedSampler

from illustrious.data.captions.rng import EpochBatch

log = logging.getLogger(__name__)


def group_by_bucket(bucket_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Bucket -> indices of its members, ascending."""
    bucket_ids = np.asarray(bucket_ids)
    order = np.argsort(bucket_ids, kind="stable")
    buckets, starts = np.unique(bucket_ids[order], return_index=True)
    return {int(b): order[s:e] for b, s, e in zip(buckets, starts, [*starts[1:], len(order)], strict=True)}


class BucketBatchSampler(DistributedSampler):
    def __init__(self, bucket_ids, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, shuffle: bool = True,
                 chunk_counts: Callable[[int], np.ndarray] | None = None):
        # DistributedSampler.__init__ wants a dataset and a process group; we have neither and need neither.
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.bucket_ids = np.asarray(bucket_ids, dtype=np.int64)
        self.members = group_by_bucket(self.bucket_ids)
        self.batch_size, self.seed, self.drop_last, self.shuffle = batch_size, seed, drop_last, shuffle
        self.rank, self.num_replicas = rank, world_size
        self.chunk_counts = chunk_counts
        self._counts: tuple[int, np.ndarray] | None = None  # (epoch, its chunk counts)
        self.epoch = 0
        self.offset = 0  # global batches of this epoch already done (where the next iteration starts)
        self._resumed = (0, 0)  # (offset, per-rank count) the current epoch was resumed at
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{len(self.bucket_ids)} samples make no batch of {batch_size} per rank for "
                             f"{world_size} ranks with drop_last={drop_last}")

    # -- the epoch's batches ------------------------------------------------------------------------------
    def global_batches(self, epoch: int) -> np.ndarray:
        """(T, batch_size) indices: all batches of `epoch` in global order, before padding for ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = self.epoch_chunk_counts(epoch)
        rows = []
        for bucket in sorted(self.members):
            members = self.members[bucket]
            perm = rng.permutation(members) if self.shuffle else members
            if counts is not None:  # equal chunk counts side by side, in shuffled order within each count
                perm = perm[np.argsort(counts[perm], kind="stable")]
            full = len(perm) // self.batch_size
            if full:
                rows.append(perm[:full * self.batch_size].reshape(full, self.batch_size))
            rest = perm[full * self.batch_size:]
            if len(rest) and not self.drop_last:
                others = perm[:full * self.batch_size]
                if counts is not None:  # fill the last batch with prompts of its own chunk count where possible
                    same = others[counts[others] == counts[rest[-1]]]
                    others = same if len(same) >= self.batch_size - len(rest) else others
                fill_from = others if len(others) >= self.batch_size - len(rest) else members
                fill = rng.choice(fill_from, self.batch_size - len(rest), replace=len(fill_from) < self.batch_size)
                rows.append(np.concatenate([rest, fill])[None])
        batches = np.concatenate(rows) if rows else np.empty((0, self.batch_size), dtype=np.int64)
        return batches[rng.permutation(len(batches))] if self.shuffle else batches

    def epoch_chunk_counts(self, epoch: int) -> np.ndarray | None:
        if self.chunk_counts is None:
            return None
        if self._counts is None or self._counts[0] != epoch:
            counts = np.asarray(self.chunk_counts(epoch), dtype=np.int64)
            if counts.shape != self.bucket_ids.shape:
                raise ValueError(f"chunk_counts gave {counts.shape[0]} counts for {len(self.bucket_ids)} samples")
            self._counts = (epoch, counts)
        return self._counts[1]

    def padded_length(self, total: int) -> int:
        w = self.num_replicas
        return (total // w) * w if self.drop_last else -(-total // w) * w

    def batches_per_epoch(self) -> int:
        """Batches each rank gets in a whole epoch."""
        return self.padded_length(self._count_batches()) // self.num_replicas

    def _count_batches(self) -> int:
        sizes = np.array([len(m) for m in self.members.values()])
        return int((sizes // self.batch_size).sum() + (0 if self.drop_last else (sizes % self.batch_size > 0).sum()))

    def rank_batches(self, epoch: int, offset: int = 0) -> np.ndarray:
        """This rank's batches of `epoch` that start at or after global position `offset`.

        What remains of the epoch is padded (with its first batches) or cut to a multiple of the world size,
        so every rank gets the same number of batches even when `offset` was reached with another world size.
        """
        batches = self.global_batches(epoch)
        rest = batches[offset:]
        w = self.num_replicas
        if self.drop_last:
            rest = rest[:len(rest) // w * w]
        elif len(rest) % w:
            rest = np.concatenate([rest, batches[:w - len(rest) % w]])
        return rest[self.rank::w]

    # -- sampler protocol -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[EpochBatch]:
        offset, self.offset = self.offset, 0  # a resume position is used once
        for batch in self.rank_batches(self.epoch, offset):
            yield EpochBatch(batch.tolist(), self.epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # Lightning also calls this for the epoch a resumed run continues
            self.epoch, self.offset, self._resumed = epoch, 0, (0, 0)

    # -- resuming ---------------------------------------------------------------------------------------
    def state_dict(self, batches_done: int) -> dict:
        """The position after this rank has finished `batches_done` batches of the current epoch
        (counting from the epoch's start, as Lightning's progress does, also across a resume)."""
        resumed_offset, resumed_count = self._resumed
        offset = resumed_offset + (batches_done - resumed_count) * self.num_replicas
        epoch = self.epoch
        if self._count_batches() - offset < (self.num_replicas if self.drop_last else 1):  # the epoch is done
            epoch, offset, batches_done = epoch + 1, 0, 0
        return {"epoch": epoch, "offset": offset, "batches_done": batches_done,
                "world_size": self.num_replicas, "seed": self.seed, "batch_size": self.batch_size,
                "num_samples": len(self.bucket_ids), "drop_last": self.drop_last,
                "group_by_chunks": self.chunk_counts is not None}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken; a different data set, seed or batch size restarts the epoch."""
        same_data = all(state.get(k) == v for k, v in (("seed", self.seed), ("batch_size", self.batch_size),
                                                      ("num_samples", len(self.bucket_ids)),
                                                      ("drop_last", self.drop_last))) \
            and state.get("group_by_chunks", False) == (self.chunk_counts is not None)
        self.epoch = int(state["epoch"])
        if not same_data:
            log.warning("The data, seed, batch size or chunk grouping changed since the checkpoint; epoch %d restarts from its "
                        "first batch.", self.epoch)
            self.offset, self._resumed = 0, (0, int(state.get("batches_done", 0)))
            return
        self.offset = int(state["offset"])
        self._resumed = (self.offset, int(state["batches_done"]))
        if state.get("world_size") != self.num_replicas:
            log.warning("Resuming with %d ranks where the checkpoint had %s: the epoch continues at global batch "
                        "%d, so its last steps may be fewer or more than Lightning counts.",
                        self.num_replicas, state.get("world_size"), self.offset)
