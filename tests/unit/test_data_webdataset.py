"""WebDataset shards: writing from a folder, resuming, streaming into bucketed batches split by rank."""

from __future__ import annotations

import json
import random
import tarfile

import pytest
import torch

from illustrious.data.loading.batching import SKIPPED_KEY
from illustrious.data.sources.folder_datamodule import FolderDataModule
from illustrious.data.sources.webdataset_datamodule import WebDataModule
from illustrious.data.sources.webdataset_stream import BucketBatcher, ShardStream
from illustrious.data.storage.shard_writer import write_shards
from illustrious.errors import ConfigError
from tests.unit.test_data_folder import SMALL, make_image_folder


def folder(tmp_path, n_good=12) -> FolderDataModule:
    make_image_folder(tmp_path / "data", n_good=n_good)
    dm = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, num_workers=0)
    dm.check()
    return dm


def shards(tmp_path, shard_size=5, encoding="original", n_good=12) -> tuple[FolderDataModule, dict]:
    dm = folder(tmp_path, n_good)
    return dm, write_shards(dm.root, dm.selection.table, tmp_path / "shards", dm.settings, shard_size=shard_size,
                            encoding=encoding, progress=False)


def web(tmp_path, **kw) -> WebDataModule:
    dm = WebDataModule.from_config(urls=str(tmp_path / "shards"), **SMALL, **{"batch_size": 4, "num_workers": 0, **kw})
    dm.check()
    dm.check_pixel_multiple(8)
    return dm


def test_shards_hold_every_training_image_with_metadata(tmp_path):
    dm, index = shards(tmp_path)
    assert index["total"] == len(dm.selection) and len(index["shards"]) == -(-len(dm.selection) // 5)
    with tarfile.open(tmp_path / "shards" / index["shards"][0]["url"]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert all("." not in n.split("/")[-1].rsplit(".", 1)[0] for n in names)  # keys without dots
    assert {"path", "width", "height", "orientation", "caption", "tags", "rating", "score"} <= set(meta)


def test_rerun_keeps_shards_already_written(tmp_path):
    dm, index = shards(tmp_path)
    first = tmp_path / "shards" / index["shards"][0]["url"]
    stamp = first.stat().st_mtime_ns
    (tmp_path / "shards" / index["shards"][-1]["url"]).unlink()  # as if interrupted before the last shard
    again = write_shards(dm.root, dm.selection.table, tmp_path / "shards", dm.settings, shard_size=5, progress=False)
    assert first.stat().st_mtime_ns == stamp and again["total"] == index["total"]
    assert (tmp_path / "shards" / index["shards"][-1]["url"]).is_file()


def test_reencoded_shards_are_upright_within_the_budget(tmp_path):
    dm = folder(tmp_path, n_good=3)
    dm.settings = type(dm.settings)(**{**dm.settings.__dict__, "max_megapixels": 0.005, "bomb_megapixels": 1})
    index = write_shards(dm.root, dm.selection.table, tmp_path / "shards", dm.settings, shard_size=100,
                         encoding="webp", progress=False)
    assert [p["reason"] for s in index["shards"] for p in s["problems"]] == ["decode_failed"]  # the truncated jpg
    with tarfile.open(tmp_path / "shards" / index["shards"][0]["url"]) as tar:
        metas = [json.loads(tar.extractfile(n).read()) for n in tar.getnames() if n.endswith(".json")]
    rotated = next(m for m in metas if m["path"] == "modes/rotated.jpg")
    assert rotated["orientation"] == 1 and rotated["width"] > rotated["height"]
    assert all(m["width"] * m["height"] <= 5000 * 1.01 for m in metas)


def test_stream_yields_one_bucket_batches_in_the_common_format_and_reports_failures(tmp_path):
    shards(tmp_path)
    dm = web(tmp_path, batches_per_epoch=12)  # more than one pass over the shards: every sample is tried
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader())
    skipped = []
    for batch in batches:
        assert batch["pixels"].shape[0] == 4 and batch["pixels"].dtype == torch.float32
        h, w = batch["pixels"].shape[-2:]
        assert (batch["target_size"] == torch.tensor([h, w])).all() and h % 8 == 0 and w % 8 == 0
        assert batch["original_size"].shape == (4, 2) and batch["crop_top_left"].shape == (4, 2)
        assert len(batch["captions"]) == 4 and isinstance(batch["tags"][0], dict)
        skipped += dm.on_before_batch_transfer(batch).get(SKIPPED_KEY, [])
        assert SKIPPED_KEY not in batch
    assert dm.skipped.paths("decode_failed") == ["broken/truncated.jpg"]


def one_pass(tmp_path, rank: int, world: int) -> set[str]:
    dm = web(tmp_path)
    batcher = BucketBatcher(dm.bucket_set(), dm.settings, 2, dm.loader_collate(), require_caption=True)
    one = ShardStream(dm.urls, batcher, rank=rank, world_size=world, batches_per_worker=1, shuffle_buffer=10)
    samples = one.shuffled(one.read(one.shards_of(epoch=0, worker=0, workers=1, pass_=0)), random.Random(0))
    return {p for batch in batcher(samples) for p in batch["path"]}


def test_ranks_read_disjoint_shards(tmp_path):
    dm, _ = shards(tmp_path, shard_size=4)
    rank0, rank1 = one_pass(tmp_path, 0, 2), one_pass(tmp_path, 1, 2)
    everything = set(dm.selection.table.column("path").to_pylist()) - {"broken/truncated.jpg"}
    assert rank0 and rank1 and not rank0 & rank1
    assert rank0 | rank1 == everything


def test_every_rank_yields_the_same_number_of_batches(tmp_path):
    shards(tmp_path, shard_size=4)
    counts = []
    for rank in range(2):
        dm = web(tmp_path, num_workers=0)
        dm.trainer = type("T", (), {"global_rank": rank, "world_size": 2})()
        loader = dm.train_dataloader()
        counts.append((len(loader), sum(1 for _ in loader)))
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1] > 0


def test_bad_specs_stop_before_training(tmp_path):
    with pytest.raises(ConfigError, match="data.urls is not set"):
        WebDataModule(urls=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="index.json"):
        WebDataModule(urls=str(tmp_path / "empty")).check()
    with pytest.raises(FileNotFoundError, match="do not exist"):
        WebDataModule(urls=str(tmp_path / "s-{000..002}.tar"), batches_per_epoch=2).check()
    shards(tmp_path, shard_size=100)
    dm = web(tmp_path, num_workers=2)
    with pytest.raises(ConfigError, match="resampled=true"):
        dm.check_workers(world_size=2)
