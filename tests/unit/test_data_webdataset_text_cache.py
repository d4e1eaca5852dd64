"""data=webdataset with data.text_cache: K cached caption variants per sample, keyed by the stream's sample keys
(shard, position), built once from the shards' metadata and refused when stale."""

from __future__ import annotations

import os
from itertools import islice

import pytest
import torch

from illustrious.data.captions import CaptionKey, PlainCaptions
from illustrious.data.captions.embedding_cache import TextEmbeddingCache, variant_of
from illustrious.data.sources.webdataset_stream import SHARD_BITS
from illustrious.errors import ConfigError
from tests.unit.test_captions_embedding_cache import FakeTrainer, module_for, sdxl
from tests.unit.test_data_webdataset import shards, web

SEED, VARIANTS = 3, 2


def captions():
    return PlainCaptions(styles={"tags": 1.0, "sentence": 1.0}, dropout=0.3)


def cached(tmp_path, module, **kw):
    """A WebDataModule on tmp_path's shards with a text cache, set up (the cache built or checked)."""
    dm = web(tmp_path, seed=SEED, batches_per_epoch=3, captions=kw.pop("captions", captions()),
             text_cache=str(tmp_path / "texts"), text_cache_variants=kw.pop("variants", VARIANTS), **kw)
    dm.trainer = FakeTrainer(module)
    dm.setup("fit")
    return dm


@pytest.fixture
def shard_set(tmp_path):
    shards(tmp_path, shard_size=4)  # 3 shards of the shared test folder (one image in them fails to decode)
    return tmp_path


@torch.no_grad()
def test_cached_conditioning_equals_encoding_the_drawn_captions(shard_set):
    module = module_for(sdxl())
    dm = cached(shard_set, module)
    assert (shard_set / "texts" / "cache.json").is_file()
    loader = dm.train_dataloader()
    seen: dict[str, set[str]] = {}
    for _ in range(2):  # two epochs: each draws one of the K variants per sample
        for batch in loader:
            cond = batch["conditioning"]
            live = module.backbone.encode_text(batch["captions"])  # the batch's (augmented) captions, encoded now
            assert torch.equal(cond.tokens, live.tokens) and torch.equal(cond.pooled, live.pooled)
            assert cond.mask is None and live.mask is None
            for path, caption in zip(batch["path"], batch["captions"], strict=True):
                seen.setdefault(path, set()).add(caption)
    assert len(seen) > 4 and all(len(c) <= VARIANTS for c in seen.values())
    assert any(len(c) > 1 for c in seen.values())  # augmented: a sample sees several of its variants


def test_entries_are_keyed_by_shard_and_position(shard_set):
    """Entry (key, k) is the caption the pipeline draws at CaptionKey(seed, k, key), key = shard << 32 | position."""
    module = module_for(sdxl())
    dm = cached(shard_set, module)
    batch = next(iter(dm.train_dataloader()))
    keys = []
    for raw in islice(dm.stream.read(range(len(dm.urls))), 100):
        keys.append((raw["__shard__"] << SHARD_BITS) | raw["__position__"])
    cache = TextEmbeddingCache(shard_set / "texts", VARIANTS, SEED)
    assert len({k >> SHARD_BITS for k in keys}) == len(dm.urls) > 1
    for key in keys:
        for k in range(VARIANTS):
            assert cache.variant_entry(key, k)["tokens"].shape[-1] == module.backbone.encode_text([""]).tokens.shape[-1]
    # the batch's first caption is the variant its epoch draws for its key
    pipe, source = dm.caption_pipeline, None
    for raw in dm.stream.read(range(len(dm.urls))):
        meta, _ = dm.batcher(False).parse(raw, [])
        if meta["path"] == batch["path"][0]:
            key, source = meta["caption_key"], dm.batcher(False).caption_record(meta)
    assert source is not None
    assert batch["captions"][0] == pipe(source, CaptionKey(SEED, variant_of(CaptionKey(SEED, 0, key), VARIANTS), key))


def test_cache_is_built_once_and_reused(shard_set, monkeypatch):
    cached(shard_set, module_for(sdxl()))
    stamps = {p.name: p.stat().st_mtime_ns for p in (shard_set / "texts").iterdir()}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was built again")

    monkeypatch.setattr(TextEmbeddingCache, "build", no_rebuild)
    dm = cached(shard_set, module_for(sdxl()))
    assert next(iter(dm.train_dataloader()))["conditioning"].tokens.shape[0] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (shard_set / "texts").iterdir()} == stamps


def test_one_variant_with_augmentation_is_refused(shard_set):
    with pytest.raises(ConfigError, match="no augmentation"):
        cached(shard_set, module_for(sdxl()), variants=1)
    assert not (shard_set / "texts").exists()
    fixed = PlainCaptions(styles={"tags": 1.0}, dropout=0.0)  # one fixed caption per sample: one variant is enough
    cached(shard_set, module_for(sdxl()), variants=1, captions=fixed)


def test_stale_cache_is_refused(shard_set):
    cached(shard_set, module_for(sdxl()))
    with pytest.raises(ConfigError, match="captions: cache has"):
        cached(shard_set, module_for(sdxl()), captions=PlainCaptions(styles={"tags": 1.0}, dropout=0.5))
    with pytest.raises(ConfigError, match="text_encoders: cache has"):
        cached(shard_set, module_for(sdxl(mask_padding=True)))
    with pytest.raises(ConfigError, match="text_encoder_1 trains"):
        cached(shard_set, module_for(sdxl(), text_encoder_lr=1e-4))
    # a shard written again (new captions keep a tar's size more often than not: its time tells)
    shard = sorted((shard_set / "shards").glob("*.tar"))[1]
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ConfigError, match="data: cache has"):
        cached(shard_set, module_for(sdxl()))
    # fewer shards: also another data set
    with pytest.raises(ConfigError, match="data: cache has"):
        cached(shard_set, module_for(sdxl()), val_shards=1)


def test_a_missing_entry_names_the_cache(tmp_path):
    cache = TextEmbeddingCache(tmp_path, 2, 0)
    with pytest.raises(ConfigError, match="not in the text-embedding cache"):
        cache.variant_entry(5 << SHARD_BITS, 0)


def test_trains_two_steps_on_cached_text_embeddings(shard_set, make_config):
    """Through train(), frozen text encoders: the cache is built on first use and the steps train from it (reuse:
    test_cache_is_built_once_and_reused)."""
    import json
    import math

    from illustrious.train import train
    from tests.integration.test_data_training import FAST_FOLDER
    from tests.unit.test_data_folder import SMALL_OVERRIDES

    cfg = make_config("data=webdataset", f"data.urls={shard_set / 'shards'}", "backbone=sdxl_tiny",
                      "backbone.tokenizer_max_length=12", *SMALL_OVERRIDES, *FAST_FOLDER, "optim.text_encoder_lr=0",
                      f"data.text_cache={shard_set / 'texts'}", f"data.text_cache_variants={VARIANTS}",
                      "captions.dropout=0.3", "callbacks.samples=null", "callbacks.composition=null", fast=False,
                      output_dir=shard_set / "run")
    metrics, objects = train(cfg)
    losses = [json.loads(line)["loss"] for line in (shard_set / "run" / "steps.jsonl").read_text().splitlines()]
    assert metrics["global_step"] == 2 and len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert (shard_set / "texts" / "cache.json").is_file() and list((shard_set / "texts").glob("block-*"))
    assert objects["datamodule"].texts is not None


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_feeds_the_same_cached_conditioning(shard_set, workers):
    """A checkpoint's stream position brings a new loader to the next batch, with the same cached entries (also
    from loader worker processes, which open the cache's files themselves)."""
    def batches(state=None):
        dm = cached(shard_set, module_for(sdxl()), num_workers=workers)
        if state:
            dm.load_state_dict(state)
        return dm, [(b["captions"], b["path"], b["conditioning"].tokens) for b in dm.train_dataloader()]

    dm, straight = batches()
    _, resumed = batches(dm.stream_state(epoch=0, batches_done=1))
    assert len(straight) >= 3 and len(resumed) == len(straight) - 1  # (whole batches per worker: 4 with 2 workers)
    for (c1, p1, t1), (c2, p2, t2) in zip(straight[1:], resumed, strict=True):
        assert (c1, p1) == (c2, p2) and torch.equal(t1, t2)
