"""The arena's image folder layout: <root>/prompts.json + <root>/<checkpoint>/<prompt_index>_<seed>.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from illustrious.arena.catalog import scan
from illustrious.arena.pairing import Pairing
from illustrious.errors import ConfigError

CHECKPOINTS = ("ckpt_a", "ckpt_b", "ckpt_c", "ckpt_d")


def make_images_folder(root: Path, checkpoints=CHECKPOINTS, prompts=("a red circle", "a blue square"),
                       seeds=(0,)) -> Path:
    """A folder in the arena layout with tiny PNGs (a different colour per checkpoint)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.json").write_text(json.dumps(list(prompts)))
    for c, name in enumerate(checkpoints):
        (root / name).mkdir()
        for p in range(len(prompts)):
            for seed in seeds:
                Image.new("RGB", (8, 8), (50 * c, 90, 160)).save(root / name / f"{p}_{seed}.png")
    return root


def test_scan_reads_the_layout_and_skips_and_counts_the_rest(tmp_path):
    root = make_images_folder(tmp_path / "images", checkpoints=("a", "b"), seeds=(0, 7))
    (root / "a" / "notes.png").write_bytes(b"x")       # not <prompt>_<seed>
    (root / "a" / "5_0.png").write_bytes(b"x")         # prompt 5 does not exist
    (root / "a" / "readme.txt").write_text("ignored")  # not an image suffix: not even counted
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (root / "b" / "1_9.png").symlink_to(outside)       # leaves the folder
    catalog = scan(root)
    assert catalog.checkpoints == ["a", "b"]
    assert sorted((i.checkpoint, i.prompt_index, i.seed) for i in catalog.images) == [
        (c, p, s) for c in "ab" for p in (0, 1) for s in (0, 7)]
    reasons = {Path(path).name: reason for path, reason in catalog.skipped}
    assert set(reasons) == {"notes.png", "5_0.png", "1_9.png"}
    assert "outside" in reasons["1_9.png"]
    assert all(image.path.is_relative_to(catalog.root) for image in catalog.images)
    assert sorted(catalog.groups()) == [(0, 0), (0, 7), (1, 0), (1, 7)]


def test_the_evaluate_commands_output_folder_is_read_as_it_is(tmp_path):
    """<out>/evaluation.json + <out>/images/<nn>-<label>/<j>-<seed>.png, image j showing prompt j // num_images."""
    out = tmp_path / "evaluation"
    (out / "evaluation.json").parent.mkdir()
    (out / "evaluation.json").write_text(json.dumps({"rows": [], "prompts": ["p0", "p1"], "num_images": 2, "seed": 10}))
    for folder in ("00-base", "01-finetuned"):
        (out / "images" / folder).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (8, 8)).save(out / "images" / folder / f"{j:05d}-{10 + j}.png")
    catalog = scan(out)
    assert catalog.checkpoints == ["00-base", "01-finetuned"]
    assert sorted(catalog.groups()) == [(0, 10), (0, 11), (1, 12), (1, 13)]
    assert all(len(images) == 2 for images in catalog.groups().values())
    (out / "evaluation.json").write_text(json.dumps({"prompts": ["p0"], "num_images": 0}))
    with pytest.raises(ConfigError, match="num_images"):
        scan(out)


def test_prompt_sets_choose_the_duels_that_use_them(tmp_path):
    root = make_images_folder(tmp_path / "images", checkpoints=("a", "b"), prompts=("p0", "p1", "p2"))
    (root / "prompts.json").write_text(json.dumps(
        {"prompts": [{"prompt": "character X, red hair", "set": "fixed"}, {"prompt": "anything", "set": "free"}, "both"]}))
    pairing = Pairing(scan(root), ["fixed", "free"], seed=0)
    assert {p for p, _ in pairing.candidates["fixed"]} == {0, 2}
    assert {p for p, _ in pairing.candidates["free"]} == {1, 2}
    proposal = pairing.propose("fixed")
    assert {i.checkpoint for i in proposal.images} == {"a", "b"}
    assert len({(i.prompt_index, i.seed) for i in proposal.images}) == 1  # one prompt, one seed


def test_free_for_all_needs_enough_checkpoints(tmp_path):
    root = make_images_folder(tmp_path / "images", checkpoints=("a", "b", "c"))
    pairing = Pairing(scan(root), ["fixed", "ffa"], ffa_size=4, seed=0)
    assert pairing.kinds == ("fixed",)  # 3 checkpoints: no 4-way match possible
    with pytest.raises(ConfigError, match="enough checkpoints"):
        Pairing(scan(root), ["ffa"], ffa_size=4)
    with pytest.raises(ConfigError, match="kinds"):
        Pairing(scan(root), ["duel"])


@pytest.mark.parametrize("prompts, message", [
    (None, "no prompts file"),
    ("{not json", "not valid JSON"),
    (json.dumps({"x": 1}), "expected a JSON list"),
    (json.dumps([{"prompt": "p", "set": "other"}]), "set='other'"),
    (json.dumps([3]), "entry 0"),
])
def test_bad_prompts_files_are_named(tmp_path, prompts, message):
    root = make_images_folder(tmp_path / "images", checkpoints=("a", "b"), prompts=("p",))
    if prompts is None:
        (root / "prompts.json").unlink()
    else:
        (root / "prompts.json").write_text(prompts)
    with pytest.raises(ConfigError, match=message):
        scan(root)


def test_fewer_than_two_checkpoints_or_no_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        scan(tmp_path / "missing")
    root = make_images_folder(tmp_path / "images", checkpoints=("only",))
    with pytest.raises(ConfigError, match="at least two"):
        scan(root)
