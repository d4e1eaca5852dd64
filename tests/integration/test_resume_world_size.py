"""Resuming with a different number of processes, twice in one epoch, simulated rank by rank with the
positions each rank's checkpoint would record: every batch of the epoch is trained exactly once."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from illustrious.data.loading.sampler import BucketBatchSampler

BUCKETS = np.repeat(np.arange(5), [37, 12, 5, 64, 20])  # 138 samples, batches of 4 from one bucket each


def run(state: dict | None, world: int, steps: int | None, epoch: int) -> tuple[list[list[int]], dict | None]:
    """`world` ranks train `steps` steps (None: to the end of the epoch) from `state`; returns the batches
    they trained and the state rank 0 checkpoints at the end (as RunCheckpoint would)."""
    samplers = [BucketBatchSampler(BUCKETS, 4, seed=5, rank=r, world_size=world) for r in range(world)]
    progress = state["batches_done"] if state else 0  # Lightning's restored per-rank batch count
    for s in samplers:
        if state:
            s.load_state_dict(state)
        s.set_epoch(epoch)
    iters = [iter(s) for s in samplers]
    trained, done = [], 0
    while steps is None or done < steps:
        step = [next(it, None) for it in iters]
        if any(b is None for b in step):
            break
        trained.extend(step)  # rank order within a step = global order
        done += 1
    return trained, samplers[0].state_dict(batches_done=progress + done)


@pytest.mark.parametrize("worlds", [(2, 3, 1), (4, 1, 2), (1, 3, 4)])
def test_an_epoch_across_world_size_changes_trains_every_batch_once(worlds):
    epoch = 3
    reference = BucketBatchSampler(BUCKETS, 4, seed=5).global_batches(epoch).tolist()
    first, state = run(None, worlds[0], 5, epoch)
    second, state = run(state, worlds[1], 4, epoch)
    third, end = run(state, worlds[2], None, epoch)
    trained = first + second + third
    # the last world size pads its final step by repeating the epoch's first batches; nothing else repeats
    padding = len(trained) - len(reference)
    assert 0 <= padding < worlds[2]
    assert trained[:len(reference)] == reference  # the global order, nothing skipped or repeated
    assert trained[len(reference):] == reference[:padding]
    counts = Counter(i for batch in trained[:len(reference)] for i in batch)
    assert set(counts) == set(range(len(BUCKETS)))  # every sample of the epoch trained
    assert (end["epoch"], end["offset"]) == (epoch + 1, 0)  # and the next epoch starts at its beginning
