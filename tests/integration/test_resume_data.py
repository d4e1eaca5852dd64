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



def test_text_cache_and_chunk_grouping_train(make_config, tmp_path):
    """data.text_cache (built on first use) + data.group_by_chunks through train(); refused while the text
    encoders train. (Exact resume of these batches: tests/unit/test_captions_embedding_cache.py.)"""
    import json
    import math

    import pytest

    from illustrious.errors import ConfigError
    from illustrious.train import train

    common = ["backbone=sdxl_tiny", "backbone.tokenizer_max_length=12", f"data.text_cache={tmp_path / 'texts'}",
              "data.text_cache_variants=2", "data.group_by_chunks=true", "data.length=16", "captions.dropout=0.3",
              "callbacks.samples=null", "callbacks.composition=null", "trainer.max_steps=2"]
    train(make_config(*common, "optim.text_encoder_lr=0", output_dir=tmp_path / "run"))
    assert (tmp_path / "texts" / "cache.json").is_file()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    with pytest.raises(ConfigError, match="text_encoder_1 trains"):
        train(make_config(*common, output_dir=tmp_path / "refused"))
