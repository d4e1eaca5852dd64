"""data.group_by_chunks for WebDataset: every stream batch holds one aspect bucket and one SDXL chunk count (of the
captions it trains on), no sample is lost or put in two batches over a pass, and resume stays exact."""

from __future__ import annotations

import pytest
import torch

from illustrious.data.captions import CaptionPipeline
from illustrious.data.loading.batching import SKIPPED_KEY
from illustrious.data.loading.chunk_groups import ChunkCounts, PromptChunks, chunked_encoders
from illustrious.data.sources.webdataset_stream import read_shard
from tests.unit.test_captions_embedding_cache import module_for, sdxl
from tests.unit.test_data_webdataset import shards, web

EPOCH = 4


@pytest.fixture(scope="module")
def module():
    return module_for(sdxl())  # tiny CLIP tokenizers: 12 tokens = 10 per chunk, at most 3 chunks


def trainer(module, rank=0, world=1):
    return type("Trainer", (), {"global_rank": rank, "world_size": world, "lightning_module": module})()


def grouped(tmp_path, module, **kw):
    # tags or the written caption, 30 % dropped: prompts of 0 to ~25 tokens, 1 to 3 chunks, varying per epoch
    dm = web(tmp_path, group_by_chunks=True, seed=3,
             captions=CaptionPipeline({"tags": 0.5, "sentence": 0.5}, dropout=0.3), **kw)
    dm.trainer = trainer(module)
    dm.setup("fit")
    return dm


def test_prompt_chunks_count_the_chunks_the_backbone_encodes(module):
    """The reference is the encoding itself: a prompt encoded alone comes out as chunks x 12 token states."""
    encoders = chunked_encoders(module.backbone)
    length = encoders[0].tokenizer.model_max_length
    prompts = ["", "1girl", *(" ".join("ab" * k for _ in range(n)) for k in (1, 3) for n in range(1, 12))]
    with torch.no_grad():
        encoded = [module.backbone.encode_text([p]).tokens.shape[1] // length for p in prompts]
    assert set(encoded) == {1, 2, 3}
    assert [PromptChunks(encoders)(p) for p in prompts] == encoded
    assert list(ChunkCounts(prompts, lambda source, epoch, index: source, encoders)(0)) == encoded


def test_every_batch_has_one_chunk_count_and_every_sample_one_batch(tmp_path, module):
    shards(tmp_path, shard_size=5)
    for buffer in (512, 4):  # 4: the buffer overflows and the fullest group is emitted, filled up
        dm = grouped(tmp_path, module, bucket_buffer=buffer)
        batcher = dm.batcher(drop_last=False, chunks=dm.prompt_chunks)
        everything = [raw for shard, url in enumerate(dm.urls) for raw in read_shard(url, shard)]
        kept = {parsed[0]["path"] for raw in everything if (parsed := batcher.parse(dict(raw), [])) is not None}
        counts_seen = set()
        for epoch in range(3):
            owners: dict[str, int] = {}
            undecodable = set()
            for b, batch in enumerate(batcher(iter(everything), epoch=epoch)):
                undecodable |= {path for path, _ in batch.get(SKIPPED_KEY, [])}
                counts = {dm.prompt_chunks(c) for c in batch["captions"]}
                assert len(counts) == 1, batch["captions"]
                assert len({tuple(s) for s in batch["target_size"].tolist()}) == 1  # and one bucket
                counts_seen |= counts
                for path in set(batch["path"]):  # repeats inside a batch are the fill-up of a short group
                    assert owners.setdefault(path, b) == b, f"{path} in two batches"
            assert owners.keys() | undecodable == kept and not owners.keys() & undecodable  # every sample, once
        assert counts_seen == {1, 2, 3}  # grouping really had several counts to separate


def run(tmp_path, module, workers, state=None, epochs=2):
    dm = web(tmp_path, group_by_chunks=True, num_workers=workers, seed=3, batches_per_epoch=EPOCH,
             captions=CaptionPipeline({"tags": 0.5, "sentence": 0.5}, dropout=0.3))
    dm.trainer = trainer(module)
    if state:
        dm.load_state_dict(state)
    loader = dm.train_dataloader()
    out = [[(b["captions"], b["path"], float(b["pixels"].float().sum())) for b in loader] for _ in range(epochs)]
    return dm, out


@pytest.mark.parametrize("workers", [0, 2])
def test_grouped_stream_resumes_at_the_exact_batch(tmp_path, module, workers):
    shards(tmp_path, shard_size=2)
    dm, straight = run(tmp_path, module, workers)
    assert [len(e) for e in straight] == [EPOCH, EPOCH]
    assert all(len({dm.prompt_chunks(c) for c in captions}) == 1 for e in straight for captions, _, _ in e)
    state = dm.stream_state(epoch=0, batches_done=3)
    assert state["group_by_chunks"] is True
    _, resumed = run(tmp_path, module, workers, state)
    assert resumed[0] == straight[0][3:] and resumed[1] == straight[1]
    # a checkpoint taken without grouping restarts the epoch instead of misplacing it
    ungrouped = {**state, "group_by_chunks": False}
    _, restarted = run(tmp_path, module, workers, ungrouped, epochs=1)
    assert restarted[0] == straight[0]


def test_needs_a_backbone_with_chunked_encoders(tmp_path):
    from illustrious.errors import ConfigError

    shards(tmp_path, shard_size=5)
    dm = web(tmp_path, group_by_chunks=True)
    dm.trainer = trainer(None)
    with pytest.raises(ConfigError, match="group_by_chunks needs the module's backbone"):
        dm.setup("fit")


def test_trains_two_steps_with_chunk_groups(tmp_path, make_config):
    """Through train(): the data module takes the tokenizers from the fitted module's backbone."""
    import json
    import math

    from illustrious.train import train
    from tests.integration.test_data_training import FAST_FOLDER
    from tests.unit.test_data_folder import SMALL_OVERRIDES

    shards(tmp_path, shard_size=5)
    cfg = make_config("data=webdataset", f"data.urls={tmp_path / 'shards'}", "backbone=sdxl_tiny",
                      "backbone.tokenizer_max_length=12", *SMALL_OVERRIDES, *FAST_FOLDER, "data.group_by_chunks=true",
                      "captions.dropout=0.3", "callbacks.samples=null", "callbacks.composition=null", fast=False,
                      output_dir=tmp_path / "run")
    metrics, objects = train(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert metrics["global_step"] == 2 and len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert objects["datamodule"].stream.batcher.chunks is not None
