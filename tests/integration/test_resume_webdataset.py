"""WebDataset streams resume at the exact batch: the batches (images, order) and each sample's caption draw
depend only on (seed, epoch, rank, worker) and the sample's key (shard, position), not on where the run was
resumed, and the position a checkpoint records (datamodule state) brings a new loader to the next batch."""

from __future__ import annotations

from illustrious.data.captions import CaptionPipeline
from tests.unit.test_data_webdataset import shards, web

EPOCH = 4  # batches per epoch and rank


def run(tmp_path, workers: int, resume_state: dict | None = None, epochs: int = 2, rank: int = 0, world: int = 1):
    """(epoch, captions, paths, pixel checksum) of every batch over `epochs` epochs of a fresh loader."""
    dm = web(tmp_path, num_workers=workers, seed=3, batches_per_epoch=EPOCH,
             captions=CaptionPipeline({"tags": 0.5, "sentence": 0.5}, dropout=0.3))
    dm.trainer = type("Trainer", (), {"global_rank": rank, "world_size": world})()
    if resume_state:
        dm.load_state_dict(resume_state)
    loader = dm.train_dataloader()
    out = []
    for _ in range(epochs):
        out.append([(batch["captions"], batch["path"], float(batch["pixels"].float().sum())) for batch in loader])
    return dm, out


def test_stream_resumes_at_the_exact_batch_with_the_same_captions(tmp_path):
    shards(tmp_path, shard_size=2)  # 6 shards: two workers on each of two ranks
    dm, straight = run(tmp_path, workers=0)
    assert [len(epoch) for epoch in straight] == [EPOCH, EPOCH]
    captions = [c for epoch in straight for batch in epoch for c in batch[0]]
    assert len(set(captions)) > 5 and "" in captions  # draws really vary (styles, dropout)
    assert straight[0] != straight[1]  # the next epoch is another order and other draws
    assert run(tmp_path, workers=0)[1] == straight  # reproducible

    # what a checkpoint after 3 batches of epoch 0 records; a new run continues with batch 4, then epoch 1
    state = dm.stream_state(epoch=0, batches_done=3)
    assert state["epoch"] == 0 and state["batches_done"] == 3
    _, resumed = run(tmp_path, workers=0, resume_state=state)
    assert resumed[0] == straight[0][3:] and resumed[1] == straight[1]
    # at the end of an epoch the position is the next epoch's start
    assert dm.stream_state(epoch=0, batches_done=EPOCH)["epoch"] == 1

    # with loader workers (each its own shards) the same holds: resume after 3 batches (2 from worker 0, 1 from 1)
    dm2, with_workers = run(tmp_path, workers=2)
    assert [len(epoch) for epoch in with_workers] == [EPOCH, EPOCH]
    _, resumed = run(tmp_path, workers=2, resume_state=dm2.stream_state(epoch=0, batches_done=3))
    assert resumed[0] == with_workers[0][3:] and resumed[1] == with_workers[1]
    _, resumed = run(tmp_path, workers=2, resume_state=dm2.stream_state(epoch=1, batches_done=1))
    assert resumed[0] == with_workers[1][1:]


def test_a_changed_layout_restarts_the_epoch_instead_of_misplacing_it(tmp_path, caplog):
    shards(tmp_path, shard_size=2)
    dm, _ = run(tmp_path, workers=0, epochs=0)
    state = dm.stream_state(epoch=1, batches_done=2)  # taken with no loader workers, resumed with two
    _, resumed = run(tmp_path, workers=2, resume_state=state, epochs=1)
    assert "restarts from its first batch" in caplog.text
    _, reference = run(tmp_path, workers=2, epochs=2)
    assert resumed[0] == reference[1]  # epoch 1 from its start


def test_ranks_draw_the_same_caption_for_the_same_sample(tmp_path):
    """A sample's caption is keyed on (seed, epoch, shard, position): on any rank or worker it is the same."""
    shards(tmp_path, shard_size=2)
    by_path: dict[tuple[int, str], set[str]] = {}
    for rank, world, workers in ((0, 1, 0), (0, 2, 2), (1, 2, 2)):
        _, epochs = run(tmp_path, workers=workers, rank=rank, world=world)
        for e, epoch in enumerate(epochs):
            for captions, paths, _ in epoch:
                for caption, path in zip(captions, paths, strict=True):
                    by_path.setdefault((e, path), set()).add(caption)
    assert by_path and all(len(c) == 1 for c in by_path.values()), by_path
