"""The caption commands on a real folder: annotate -> training batches with derived tags, tag, inspect."""

from __future__ import annotations

import json

import pytest

from illustrious.config import instantiate
from tests.unit.test_captions_tagger import make_tagger, tagger_folder  # noqa: F401 (fixture)
from tests.unit.test_data_folder import SMALL_OVERRIDES, picture

YEARS = [2012, 2015, 2018, 2019, 2020, 2021, 2022, 2023, 2024, 2025, 2016, 2023]
EXPECTED_YEAR = {2012: "oldest", 2015: "oldest", 2016: "oldest", 2018: "old", 2019: "old", 2020: "modern",
                 2021: "recent", 2022: "recent", 2023: "newest", 2024: "newest", 2025: "newest"}


def make_folder(root, with_sidecars=True):
    root.mkdir(parents=True)
    for i, year in enumerate(YEARS):
        picture(64 + 8 * (i % 3), 64, seed=i).save(root / f"img{i:02d}.png")
        if with_sidecars:
            (root / f"img{i:02d}.json").write_text(json.dumps({
                "tag_string_general": f"1girl solo long_hair tag_{i} tag_{i + 1} smile", "tag_string_character": "hatsune_miku",
                "tag_string_artist": f"artist_{i % 2}", "tag_string_copyright": "vocaloid", "rating": "gs"[i % 2],
                "score": 10 * i, "created_at": f"{year}-06-01T00:00:00.000Z"}))
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def datamodule(make_config, root, *overrides):
    cfg = make_config("data=folder", f"data.root={root}", *SMALL_OVERRIDES, "data.batch_size=4", "data.bucket_multiple=16",
                      *overrides, fast=False)
    return cfg, instantiate(cfg.data, captions=instantiate(cfg.captions))


def first_captions(dm):
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    return {p: c for batch in loader for p, c in zip(batch["path"], batch["captions"], strict=True)}


def test_annotate_then_train_with_derived_tags(folder, make_config):
    from illustrious.annotate import annotate
    from illustrious.data.captions.annotations import read_annotations

    path = annotate(folder, workers=1, progress=False, min_pool=2)
    table = read_annotations(path).to_pylist()
    assert (path.parent / "control_thresholds.json").is_file()
    by_path = {r["path"]: r for r in table}
    for i, year in enumerate(YEARS):
        row = by_path[f"img{i:02d}.png"]
        assert row["year_tag"] == EXPECTED_YEAR[year]
        assert row["score_tag"] is not None and len(row["control_tags"]) == 6
    # nothing dropped: weak dropout is switched off per category (`weak_dropout={}` would merge with the defaults)
    no_dropout = ["captions=illustrious", "captions.uncond_prob=0", "captions.dropout_levels=[]",
                  "captions.weak_dropout.character=0", "captions.weak_dropout.artist=0", "captions.paraphrase_prob=0",
                  "captions.space_prob=0", "captions.register_prob=0"]
    _, dm = datamodule(make_config, folder, *no_dropout)
    captions = first_captions(dm)
    for p, caption in captions.items():
        words = caption.split(", ")
        assert words[:2] == ["1girl", "solo"] and "hatsune miku" in words
        assert words[-1] == by_path[p]["year_tag"] and words[-2] == by_path[p]["score_tag"]
    # the same (seed, epoch, sample): the same captions from a fresh data module
    _, again = datamodule(make_config, folder, *no_dropout)
    assert first_captions(again) == captions


def test_captions_change_with_the_epoch(folder, make_config):
    _, dm = datamodule(make_config, folder, "captions=illustrious")
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        dm.sampler.set_epoch(epoch)
        epochs.append({p: c for b in loader for p, c in zip(b["path"], b["captions"], strict=True)})
    assert sum(epochs[0][p] != epochs[1][p] for p in epochs[0]) >= len(epochs[0]) // 2


def test_tag_command_writes_sidecars_the_scan_reads(tmp_path, tagger_folder):  # noqa: F811
    from illustrious.data.index.manifest import load_or_scan
    from illustrious.tag import tag_folder

    root = make_folder(tmp_path / "untagged", with_sidecars=False)
    (root / "img00.json").write_text(json.dumps({"tags": {"general": ["kept"]}}))
    tagger = make_tagger(tagger_folder, general_threshold=0.0, character_threshold=1.0)
    counts = tag_folder(root, tagger, batch_size=5, progress=False)
    assert counts == {"images": 12, "tagged": 11, "had_sidecar": 1, "failed": 0}
    sidecar = json.loads((root / "img01.json").read_text())
    assert sidecar["tags"]["general"] and sidecar["tags"]["character"] == [] and sidecar["rating"] in {
        "general", "sensitive", "questionable", "explicit"}
    table = load_or_scan(root, tmp_path / "m.parquet", progress=False)[0].table
    rows = {r["path"]: r for r in table.to_pylist()}
    assert rows["img00.png"]["tags_general"] == ["kept"]
    assert set(rows["img01.png"]["tags_general"]) == {"1girl", "long_hair", "smile"}


def test_inspect_shows_metadata_captions_and_token_counts(folder, make_config):
    from illustrious.data.captions import TagCaptions
    from illustrious.inspect_captions import folder_records, inspect, token_counters

    cfg, dm = datamodule(make_config, folder, "captions=illustrious", "backbone=sdxl_tiny")
    lines: list[str] = []
    inspect(folder_records(dm, 2), TagCaptions(), token_counters(cfg.backbone), seed=0, variants=10,
            print_fn=lines.append)
    text = "\n".join(lines)
    assert text.count("=== sample") == 2 and text.count("[epoch ") == 20
    assert "tags_general: ['1girl', 'solo'" in text and "rating: general" in text
    assert text.count("clip_l: ") == 20 and "30+10 = 40 tokens in 2 chunks" in text  # 30-token chunks (tiny)
    lumina = make_config("backbone=lumina_tiny", fast=False).backbone
    gemma = token_counters(lumina)["gemma"]
    assert gemma("") == "1 tokens (0 of the caption)"  # an empty prompt stays bare: just <bos>
    assert "of the caption" in gemma("1girl, solo")
