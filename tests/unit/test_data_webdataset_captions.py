"""WebDataset shards carry the caption record fields of the folder they were written from (tags by category,
rating, and the annotation command's score/year/control tags), and the stream builds each sample's caption
record with the folder source's builder: a folder and its shards give the same captions for the same key."""

from __future__ import annotations

import json
import tarfile

import pytest

from illustrious.config import instantiate
from illustrious.data.captions import CaptionKey
from illustrious.data.captions.source import named_captions
from illustrious.data.index.labels import caption_variants
from illustrious.data.sources.folder_datamodule import FolderDataModule
from illustrious.data.sources.webdataset_stream import CAPTION_KEY, read_shard
from illustrious.data.storage.shard_writer import write_shards
from tests.unit.test_captions_commands import make_folder
from tests.unit.test_data_folder import SMALL, SMALL_OVERRIDES

AUGMENTING = ["captions=illustrious"]  # the shipped pipeline: shuffle, dropout levels, paraphrase, registers ...


def folder_records(root) -> dict[str, dict]:
    dm = FolderDataModule.from_config(root=str(root), **SMALL, bucket_multiple=16, num_workers=0)
    dm.check()
    samples = dm.samples(latents=False)
    return dm, {samples.row(i)["path"]: samples.caption_source(i) for i in range(len(samples))}


def make_shards(dm, out):
    return write_shards(dm.root, dm.selection.table, out, dm.settings, shard_size=5, progress=False)


def web(make_config, urls, *overrides):
    cfg = make_config("data=webdataset", f"data.urls={urls}", *SMALL_OVERRIDES, "data.batch_size=4",
                      "data.bucket_multiple=16", *overrides, fast=False)
    dm = instantiate(cfg.data, captions=instantiate(cfg.captions))
    dm.check()
    return dm


def stream_records(dm) -> dict[str, tuple[int, dict]]:
    """path -> (stream key, caption record) of every training sample, as the stream parses them."""
    batcher, out = dm.batcher(drop_last=False), {}
    for shard, url in enumerate(dm.urls):
        for raw in read_shard(url, shard):
            parsed = batcher.parse(raw, [])
            if parsed is not None:
                meta, _ = parsed
                out[meta["path"]] = (meta[CAPTION_KEY], batcher.caption_record(meta))
    return out


@pytest.fixture
def annotated(tmp_path):
    from illustrious.annotate import annotate

    root = make_folder(tmp_path / "data")  # category sidecars: character, copyright, artist, rating, score, date
    annotate(root, workers=1, progress=False, min_pool=2)
    return root


def test_shards_give_the_folders_captions_for_the_same_key(annotated, tmp_path, make_config):
    folder_dm, expected = folder_records(annotated)
    assert all(r["score_tag"] and r["year_tag"] and len(r["control_tags"]) == 6 for r in expected.values())
    make_shards(folder_dm, tmp_path / "shards")
    dm = web(make_config, tmp_path / "shards", *AUGMENTING)
    streamed = stream_records(dm)
    assert streamed.keys() == expected.keys()
    pipeline, seed = dm.loader_collate().captions, dm.loader_collate().seed
    for path, (key, record) in streamed.items():
        assert record == expected[path]
        for epoch in range(4):
            k = CaptionKey(seed, epoch, key)
            assert pipeline(record, k) == pipeline(expected[path], k)
    # and what training batches carry: the folder record's caption drawn at the stream's key
    dm.setup("fit")
    seen = 0
    for batch in dm.train_dataloader():
        for path, caption in zip(batch["path"], batch["captions"], strict=True):
            assert caption == pipeline(expected[path], CaptionKey(seed, 0, streamed[path][0]))
            seen += 1
    assert seen >= len(expected)
    # the derived tags reach the prompt (nothing dropped, control tokens ordered in: ends in control, score, year)
    plain = web(make_config, tmp_path / "shards", "captions=illustrious", "captions.uncond_prob=0",
                "captions.dropout_levels=[]", "captions.weak_dropout.character=0", "captions.weak_dropout.artist=0",
                "captions.paraphrase_prob=0",
                "captions.space_prob=0", "captions.register_prob=0",
                "captions.order=[people,character,copyright,rating,general,artist,control,score,year]")
    draw = plain.loader_collate().captions
    for path, (key, record) in stream_records(plain).items():
        words = draw(record, CaptionKey(0, 0, key)).split(", ")
        assert words[-2:] == [expected[path]["score_tag"], expected[path]["year_tag"]]
        assert "hatsune miku" in words and set(expected[path]["control_tags"]) <= set(words[-8:-2])


def test_unannotated_and_old_shards_keep_working(tmp_path, make_config):
    root = make_folder(tmp_path / "data")
    folder_dm, expected = folder_records(root)  # not annotated: no derived tags
    make_shards(folder_dm, tmp_path / "shards")
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile(next(n for n in tar.getnames() if n.endswith(".json"))).read())
    assert not {"score_tag", "year_tag", "control_tags"} & set(meta)  # written only where annotated
    for captions in ("illustrious", "plain"):
        dm = web(make_config, tmp_path / "shards", f"captions={captions}")
        for path, (_, record) in stream_records(dm).items():
            assert record == expected[path]
            # captions=plain picks among the same strings as before the stream built structured records
            assert named_captions(record) == caption_variants(record["caption"], folder_tags(folder_dm, path), "tags")


def folder_tags(dm, path):
    row = next(r for r in dm.selection.table.to_pylist() if r["path"] == path)
    return {c[len("tags_"):]: row[c] or [] for c in row if c.startswith("tags_")}


def test_rerun_after_annotating_rewrites_the_shards(tmp_path):
    from illustrious.annotate import annotate

    root = make_folder(tmp_path / "data")
    dm, _ = folder_records(root)
    before = make_shards(dm, tmp_path / "shards")
    annotate(root, workers=1, progress=False, min_pool=2)
    dm, expected = folder_records(root)
    after = make_shards(dm, tmp_path / "shards")
    assert [s["metadata"] for s in before["shards"]] != [s["metadata"] for s in after["shards"]]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile(next(n for n in tar.getnames() if n.endswith(".json"))).read())
    assert meta["year_tag"] == expected[meta["path"]]["year_tag"] and len(meta["control_tags"]) == 6


def test_malformed_derived_fields_skip_the_sample(annotated, tmp_path, make_config):
    folder_dm, _ = folder_records(annotated)
    make_shards(folder_dm, tmp_path / "shards")
    dm = web(make_config, tmp_path / "shards")
    batcher, skipped = dm.batcher(drop_last=False), []
    raw = next(read_shard(dm.urls[0], 0))
    raw["json"] = json.dumps({**json.loads(raw["json"]), "control_tags": "vivid"}).encode()
    assert batcher.parse(raw, skipped) is None
    assert "control_tags must be a list of strings" in skipped[0][1]
