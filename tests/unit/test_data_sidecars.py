"""Sidecars: Danbooru and other metadata shapes normalised to tags by category; captions; broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from illustrious.data.index.labels import caption_variants
from illustrious.data.index.sidecars import SidecarError, normalise, read_caption, read_metadata, tags_caption
from illustrious.data.loading.batching import SKIPPED_KEY, Collate, LoadedBatch, to_float


def test_danbooru_post():
    meta = normalise({"tag_string_general": "1girl long_hair ^_^", "tag_string_character": "hatsune_miku",
                      "tag_string_copyright": "vocaloid", "tag_string_artist": "someone",
                      "tag_string_meta": "highres", "tag_string": "ignored when categories exist",
                      "rating": "q", "score": 42, "created_at": "2020-05-06T07:08:09.000-04:00"})
    assert meta.tags == {"character": ["hatsune_miku"], "copyright": ["vocaloid"], "artist": ["someone"],
                         "general": ["1girl", "long_hair", "^_^"], "meta": ["highres"]}
    assert (meta.rating, meta.score, meta.created) == ("questionable", 42.0, "2020-05-06T07:08:09.000-04:00")
    assert tags_caption(meta.tags) == "hatsune miku, vocaloid, someone, 1girl, long hair, ^_^"  # no meta tags


def test_nested_and_flat_shapes():
    nested = normalise({"tags": {"general": ["a", "b", "a"], "character": "c_d", "species": ["cat"]},
                        "rating": "explicit", "score": {"total": 7}, "date": "2021"})
    assert nested.tags["general"] == ["a", "b", "cat"] and nested.tags["character"] == ["c_d"]
    assert (nested.rating, nested.score, nested.created) == ("explicit", 7.0, "2021")
    assert normalise({"tags": ["x", "y"]}).tags["general"] == ["x", "y"]
    assert normalise({"tag_string": "p q"}).tags["general"] == ["p", "q"]
    assert normalise({"general": ["g"], "artist": "art"}).tags["artist"] == ["art"]
    assert normalise({"caption": " a girl under a tree "}).caption == "a girl under a tree"
    with pytest.raises(TypeError):
        normalise({"tags": 5})


def test_broken_sidecars_name_their_problem(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2]")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe{")
    (tmp_path / "c.txt").write_bytes("\ufeffbom caption\n".encode())
    (tmp_path / "d.txt").write_bytes(b"\xc3\x28")
    for name, reason in [("a.json", "json_broken"), ("b.json", "json_broken")]:
        with pytest.raises(SidecarError) as e:
            read_metadata(tmp_path / name)
        assert e.value.reason == reason
    assert read_caption(tmp_path / "c.txt") == "bom caption"
    with pytest.raises(SidecarError) as e:
        read_caption(tmp_path / "d.txt")
    assert e.value.reason == "caption_undecodable"
    with pytest.raises(SidecarError) as e:
        read_caption(tmp_path / "missing.txt")
    assert e.value.reason == "sidecar_unreadable"
    assert json.loads((tmp_path / "a.json").read_text()) == [1, 2]


def test_caption_variants_feed_the_caption_pipeline():
    tags = {"character": ["miku"], "general": ["1girl"]}
    assert caption_variants("a sentence", tags, "sentence") == {"tags": "miku, 1girl", "sentence": "a sentence"}
    assert caption_variants("1girl, solo", tags, "tags") == {"tags": "1girl, solo"}  # the .txt wins
    assert caption_variants(None, {}, "tags") == ""


def test_collate_makes_float_pixels_and_carries_skips():
    samples = [{"pixels": np.full((3, 2, 2), v, dtype=np.uint8), "captions": "x", "original_size": (2, 2),
                "crop_top_left": (0, 0), "target_size": (2, 2), "path": f"{v}.png"} for v in (0, 255)]
    batch = Collate()(LoadedBatch(samples, [("bad.png", "decode_failed: truncated")]))
    assert batch["pixels"].dtype == torch.float32
    assert batch["pixels"][0].min() == -1 and batch["pixels"][1].max() == 1
    assert batch[SKIPPED_KEY] == [("bad.png", "decode_failed: truncated")] and batch["path"] == ["0.png", "255.png"]
    assert batch["target_size"].tolist() == [[2, 2], [2, 2]]
    deferred = Collate(defer_float=True)(samples)
    assert deferred["pixels"].dtype == torch.uint8
    assert torch.equal(to_float(deferred)["pixels"], batch["pixels"])
    half = [{"latents": torch.ones(4, 2, 2, dtype=torch.float16), "captions": ""}]
    assert Collate()(half)["latents"].dtype == torch.float32


def test_one_caption_rule_for_scan_selection_and_stream():
    import pyarrow as pa

    from illustrious.data.index.labels import has_caption, has_caption_rows
    from illustrious.data.index.manifest import rows_to_table
    from illustrious.data.index.sidecars import TAG_CATEGORIES

    cases = [  # (caption, tags) -> has a caption
        ("a girl", {}, True),
        ("   ", {}, False),  # whitespace is no caption
        (None, {"general": ["1girl"]}, True),
        (None, {"character": ["hatsune_miku"]}, True),
        (None, {"meta": ["absurdres"]}, False),  # meta tags are not prompts
        ("", {"general": []}, False),
        (None, {}, False),
    ]
    for caption, tags, expected in cases:
        assert has_caption(caption, tags) is expected, (caption, tags)
    rows = [{"path": f"{i}.png", "caption": caption, **{f"tags_{c}": tags.get(c, []) for c in TAG_CATEGORIES}}
            for i, (caption, tags, _) in enumerate(cases)]
    table = rows_to_table(rows)
    assert isinstance(table, pa.Table)
    assert has_caption_rows(table).tolist() == [expected for _, _, expected in cases]  # the same rule, vectorised


def test_every_source_builds_the_same_sample_record():
    from illustrious.data.loading.sample import sample_record
    from illustrious.data.sources.shapes import ShapesDataset

    record = sample_record({"tags": "a"}, ((10, 20), (1, 2), (8, 16)), pixels=np.zeros((3, 8, 16), np.uint8),
                           path="x.png")
    assert record["original_size"] == (10, 20) and record["crop_top_left"] == (1, 2)
    assert record["target_size"] == (8, 16) and record["path"] == "x.png" and "latents" not in record
    with pytest.raises(ValueError, match="exactly one"):
        sample_record("a", ((1, 1), (0, 0), (1, 1)))
    shapes = ShapesDataset(length=2, width=16, height=24)[0]
    # (caption_key: the (seed, epoch, index) key of the caption draw; the collate consumes it)
    assert set(shapes) == {"pixels", "captions", "layout", "original_size", "crop_top_left", "target_size", "caption_key"}
    assert shapes["original_size"] == shapes["target_size"] == (24, 16) and shapes["crop_top_left"] == (0, 0)
    collated = Collate()([shapes, ShapesDataset(length=2, width=16, height=24)[1]])
    assert collated["pixels"].shape == (2, 3, 24, 16) and collated["target_size"].tolist() == [[24, 16]] * 2
