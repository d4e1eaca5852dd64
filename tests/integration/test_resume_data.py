"""Data-side randomness after a resume: the batches and each sample's caption draw depend only on (seed, epoch,
index), not on loader workers or on where the run was resumed."""

from __future__ import annotations

from itertools import islice

from illustrious.data.captions import CaptionPipeline
from illustrious.data.sources.shapes_datamodule import ShapesDataModule


def captions(workers: int, resume_state: dict | None = None, n: int = 6) -> list[list[str]]:
    dm = ShapesDataModule(length=48, batch_size=4, num_workers=workers, seed=3,
                          captions=CaptionPipeline({"tags": 0.5, "sentence": 0.5}, dropout=0.3))
    if resume_state:
        dm.load_state_dict(resume_state)
    return [batch["captions"] for batch in islice(dm.train_dataloader(), n)]


def test_shapes_captions_are_the_same_with_workers_and_after_a_resume():
    straight = captions(workers=0)
    assert len({c for batch in straight for c in batch}) > 5 and "" in sum(straight, [])  # draws really vary
    assert captions(workers=2) == straight
    dm = ShapesDataModule(length=48, batch_size=4, seed=3)
    dm.train_dataloader()
    state = dm.sampler.state_dict(batches_done=2)  # what a checkpoint after 2 steps records
    assert captions(workers=2, resume_state=state, n=4) == straight[2:]
