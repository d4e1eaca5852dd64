"""The bucket batch sampler: coverage, one bucket per batch, rank shards, determinism, exact resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data.distributed import DistributedSampler

from illustrious.data.loading.sampler import BucketBatchSampler

# 7 buckets of uneven sizes, some smaller than a batch
BUCKETS = np.repeat(np.arange(7), [37, 1, 12, 5, 64, 3, 20])


def rank_samplers(world: int, epoch: int = 0, **kw) -> list[BucketBatchSampler]:
    samplers = [BucketBatchSampler(BUCKETS, 4, seed=3, rank=r, world_size=world, **kw) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_each_epoch_across_ranks_in_equal_shares(world):
    per_rank = [list(s) for s in rank_samplers(world)]
    assert len({len(b) for b in per_rank}) == 1  # equal length on every rank
    assert all(len(b) == len(s) for b, s in zip(per_rank, rank_samplers(world), strict=True))
    seen = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert set(seen) == set(range(len(BUCKETS)))  # coverage
    for batches in per_rank:
        for batch in batches:
            assert len(batch) == 4 and len({BUCKETS[i] for i in batch}) == 1  # one bucket per batch
    # repeats only fill up short buckets and pad the batch count to the world size
    assert sum(seen.values()) - len(BUCKETS) < 4 * 7 + 4 * world


@pytest.mark.parametrize("world", [1, 2, 3])
def test_drop_last_gives_disjoint_shards(world):
    per_rank = [list(s) for s in rank_samplers(world, drop_last=True)]
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # no sample twice, on any rank
    assert len({len(b) for b in per_rank}) == 1
    full_batches = sum(n // 4 for n in Counter(BUCKETS.tolist()).values())
    assert len(per_rank[0]) == full_batches // world


def test_ranks_take_disjoint_positions_of_one_global_order():
    world = 3
    per_rank = [list(s) for s in rank_samplers(world)]
    global_order = rank_samplers(1)[0]
    padded = global_order.global_batches(0)
    padded = np.concatenate([padded, padded[: (-len(padded)) % world]])
    for r in range(world):
        assert per_rank[r] == padded[r::world].tolist()


def test_deterministic_per_seed_and_epoch():
    a, b = rank_samplers(1)[0], rank_samplers(1)[0]
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b) and sorted(map(sorted, list(a))) != sorted(map(sorted, list(b)))
    c = BucketBatchSampler(BUCKETS, 4, seed=4)
    assert list(c) != list(a)


@pytest.mark.parametrize("done", [0, 5, 17])
def test_resume_continues_at_the_exact_batch(done):
    world = 2
    full = [list(s) for s in rank_samplers(world, epoch=2)]
    for rank in range(world):
        before = rank_samplers(world, epoch=2)[rank]
        state = before.state_dict(batches_done=done)
        after = BucketBatchSampler(BUCKETS, 4, seed=3, rank=rank, world_size=world)
        after.load_state_dict(state)
        after.set_epoch(2)  # Lightning calls this for the resumed epoch too: it must not reset the position
        assert list(after) == full[rank][done:]
        assert list(after) == full[rank]  # the next pass over the same epoch is whole again


def test_finishing_an_epoch_resumes_at_the_next():
    sampler = rank_samplers(1, epoch=0)[0]
    state = sampler.state_dict(batches_done=len(sampler))
    assert (state["epoch"], state["offset"]) == (1, 0)


def test_resume_with_a_different_world_size_keeps_the_global_position():
    state = rank_samplers(2, epoch=1)[0].state_dict(batches_done=6)  # 2 ranks x 6 = 12 global batches done
    new = []
    for rank in range(3):
        s = BucketBatchSampler(BUCKETS, 4, seed=3, rank=rank, world_size=3)
        s.load_state_dict(state)
        new.append(list(s))
    padded = rank_samplers(1)[0].global_batches(1)
    padded = np.concatenate([padded, padded[: (-len(padded)) % 3]]).tolist()
    interleaved = [new[i % 3][i // 3] for i in range(sum(map(len, new)))]
    assert interleaved == padded[12:]  # the 3 new ranks do exactly what remained, in order


def test_a_changed_data_set_restarts_the_epoch():
    state = rank_samplers(1, epoch=3)[0].state_dict(batches_done=4)
    other = BucketBatchSampler(BUCKETS[:-5], 4, seed=3)
    other.load_state_dict(state)
    assert other.epoch == 3 and list(other) == other.rank_batches(3).tolist()


def test_lightning_sees_a_distributed_sampler():
    # Lightning wraps samplers that are not DistributedSamplers again under DDP (double sharding).
    assert isinstance(BucketBatchSampler(BUCKETS, 4), DistributedSampler)


def test_too_few_samples_for_a_batch_per_rank_is_an_error():
    with pytest.raises(ValueError, match="no batch"):
        BucketBatchSampler(np.zeros(3, dtype=int), 4, world_size=2, drop_last=True)


# -- grouping by chunk count (SDXL long prompts) ---------------------------------------------------------


def fake_chunk_counts(epoch: int) -> np.ndarray:
    """1, 2 or 3 chunks per sample, a pure function of (epoch, index) as caption draws are."""
    return np.random.default_rng([99, epoch]).choice([1, 1, 1, 2, 3], size=len(BUCKETS))


@pytest.mark.parametrize("drop_last", [False, True])
def test_chunk_grouping_batches_equal_counts_together(drop_last):
    plain = BucketBatchSampler(BUCKETS, 4, seed=3, drop_last=drop_last)
    grouped = BucketBatchSampler(BUCKETS, 4, seed=3, drop_last=drop_last, chunk_counts=fake_chunk_counts)
    assert len(grouped) == len(plain)  # the same number of batches: resume and Lightning's counts unchanged
    for epoch in (0, 1):
        grouped.set_epoch(epoch)
        plain.set_epoch(epoch)
        counts = fake_chunk_counts(epoch)
        batches = list(grouped)
        assert len(batches) == len(plain)
        # every sample in the epoch (drop_last: the same ones left out per bucket count as without grouping)
        assert Counter(BUCKETS[i] for b in batches for i in b) == Counter(BUCKETS[i] for b in plain for i in b)
        if not drop_last:
            assert set().union(*map(set, batches)) == set(range(len(BUCKETS)))
        mixed = Counter(BUCKETS[b[0]] for b in batches if len(set(counts[b])) > 1)
        for bucket, n in mixed.items():  # at most one mixed batch per boundary between a bucket's counts
            assert n <= len(set(counts[BUCKETS == bucket])) - 1 + (not drop_last)
        homogeneous = sum(len(set(counts[b])) == 1 for b in batches)
        plain_homogeneous = sum(len(set(counts[b])) == 1 for b in plain)
        assert homogeneous > plain_homogeneous and homogeneous >= len(batches) - 2 * len(mixed)
        assert all(len(set(BUCKETS[b])) == 1 for b in batches)  # still one bucket per batch


@pytest.mark.parametrize("done", [0, 7])
def test_chunk_grouping_resumes_at_the_exact_batch(done):
    world = 2
    full = [list(s) for s in rank_samplers(world, epoch=1, chunk_counts=fake_chunk_counts)]
    for rank in range(world):
        state = rank_samplers(world, epoch=1, chunk_counts=fake_chunk_counts)[rank].state_dict(batches_done=done)
        assert state["group_by_chunks"] is True
        after = BucketBatchSampler(BUCKETS, 4, seed=3, rank=rank, world_size=world, chunk_counts=fake_chunk_counts)
        after.load_state_dict(state)
        after.set_epoch(1)
        assert list(after) == full[rank][done:]
    # switching grouping on or off between runs restarts the epoch instead of skipping unseen samples
    switched = BucketBatchSampler(BUCKETS, 4, seed=3, rank=0, world_size=world)
    switched.load_state_dict(state)
    assert len(list(switched)) == len(switched)


def test_chunk_counts_follow_the_captions_each_epoch_draws():
    """ChunkCounts tokenizes the caption Collate would draw, per encoder, as prompt_chunks counts chunks."""
    from illustrious.backbones.text_encoders import CLIPPromptEncoder, load_tokenizer
    from illustrious.data.loading.chunk_groups import ChunkCounts

    tok = load_tokenizer("clip_tiny")
    tok.model_max_length = 7  # 5 tokens per chunk
    encoder = CLIPPromptEncoder(tok, model=None, max_chunks=3)
    words = "red blue green circle square triangle left right top bottom black white".split()
    sources = [words[: 2 + 3 * i] for i in range(5)]  # 2, 5, 8, 11, 14 words

    def caption(source, epoch, index):  # epoch 1 drops every other word
        return " ".join(source if epoch == 0 else source[::2])

    counts = ChunkCounts(sources, caption, [encoder], batch=2)
    assert counts(0).tolist() == [1, 1, 2, 3, 3]  # ceil(n / 5), at most 3
    assert counts(1).tolist() == [1, 1, 1, 2, 2]
    assert counts(1).tolist() == [max(1, min(3, -(-len(encoder.token_ids([caption(s, 1, 0)])[0]) // 5))) for s in sources]
