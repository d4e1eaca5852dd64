"""Scanning a folder into a manifest: counts of every problem, reuse without rescanning, incremental updates.

`make_image_folder` (also used by the other data tests) writes real files with Pillow: many sizes, modes,
formats and aspect ratios, every kind of sidecar, and deliberately broken files.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from illustrious.data.index import manifest as manifest_module
from illustrious.data.index import scan as scan_module
from illustrious.data.index.manifest import load_or_scan, read_manifest, report_path
from illustrious.data.index.report import ProblemReport
from illustrious.data.sources.folder_datamodule import FolderDataModule
from illustrious.errors import ConfigError

# Settings that suit the small test images (the real defaults want 768 px and more); buckets around 32x32
# keep the tiny models' training steps short.
SMALL = dict(min_side=32, max_aspect=4.0, bucket_megapixels=(0.0006, 0.0012), bucket_step=16)
SMALL_OVERRIDES = ["data.min_side=32", "data.max_aspect=4.0", "data.bucket_megapixels=[0.0006,0.0012]",
                   "data.bucket_step=16", "data.num_workers=0"]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, non-symmetric picture (gradients), so resizes and rotations are checkable."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    np.full_like(x, (seed * 37) % 256)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def danbooru(general: str, character: str = "", artist: str = "", rating: str = "g", score: int = 5) -> str:
    return json.dumps({"tag_string_general": general, "tag_string_character": character,
                       "tag_string_artist": artist, "tag_string_copyright": "original", "tag_string_meta": "highres",
                       "rating": rating, "score": score, "created_at": "2024-01-02T03:04:05.000-05:00"})


def make_image_folder(root: Path, n_good: int = 24) -> dict:
    """Write a test folder; returns what a scan must find (counts per problem, readable images, usable)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (96, 64), (64, 96), (128, 72), (72, 128), (80, 80), (120, 60), (60, 120)]
    for i in range(n_good):  # good images, JPEG/PNG/WebP, nested folders, alternating sidecar kinds
        w, h = sizes[i % len(sizes)]
        w, h = w + int(rng.integers(0, 8)), h + int(rng.integers(0, 8))
        folder = root / f"set{i % 3}" / ("deep" if i % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 3]
        (folder / f"good{i:02d}.{ext}").write_bytes(encoded(picture(w, h, i), fmt))
        if i % 2:
            (folder / f"good{i:02d}.txt").write_text(f"1girl, solo, picture {i}\n")
        else:
            (folder / f"good{i:02d}.json").write_text(danbooru(f"1girl solo long_hair tag{i}", "hatsune_miku"))
    modes = root / "modes"
    modes.mkdir()
    rgba = picture(64, 64).convert("RGBA")
    rgba.putalpha(Image.new("L", (64, 64), 0))
    special = {
        "rgba.png": encoded(rgba, "PNG"),
        "palette.gif": encoded(picture(64, 64).convert("P"), "GIF"),
        "gray16.png": encoded(Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)), "PNG"),
        "cmyk.jpg": encoded(picture(64, 64).convert("CMYK"), "JPEG"),
        "bilevel.png": encoded(picture(64, 64).convert("1"), "PNG"),
        "gray_alpha.png": encoded(picture(64, 64).convert("LA"), "PNG"),
        "rotated.jpg": encoded(picture(96, 64).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=_orientation(6)),
    }
    for name, data in special.items():
        (modes / name).write_bytes(data)
        (modes / name).with_suffix(".txt").write_text(f"mode test {name}")
    noise = np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    good_jpeg = encoded(Image.fromarray(noise), "JPEG")  # noise: most of the file is pixel data
    broken = root / "broken"
    broken.mkdir()
    (broken / "empty.jpg").write_bytes(b"")  # unreadable_image
    (broken / "garbage.png").write_bytes(b"this is not a png at all")  # unreadable_image
    (broken / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])  # header fine, pixels not: training
    (broken / "truncated.txt").write_text("a truncated picture")
    (broken / "latin1.png").write_bytes(encoded(picture(64, 64), "PNG"))
    (broken / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))  # caption_undecodable -> no caption
    (broken / "badjson.png").write_bytes(encoded(picture(64, 64), "PNG"))
    (broken / "badjson.json").write_text('{"tag_string_general": "1girl", ')  # json_broken
    (broken / "badjson.txt").write_text("kept by its txt")  # ...but its .txt still captions it
    (broken / "nocaption.png").write_bytes(encoded(picture(64, 64), "PNG"))  # missing_caption
    filtered = root / "filtered"
    filtered.mkdir()
    (filtered / "tiny.png").write_bytes(encoded(picture(16, 16), "PNG"))  # too_small
    (filtered / "tiny.txt").write_text("too small")
    (filtered / "long.png").write_bytes(encoded(picture(250, 40), "PNG"))  # too_elongated (1:6.25 > 1:4)
    (filtered / "long.txt").write_text("too long")
    hidden = root / ".thumbnails"
    hidden.mkdir()
    (hidden / "ignored.png").write_bytes(encoded(picture(64, 64), "PNG"))  # hidden: never listed
    readable = n_good + len(special) + 4 + 2  # + truncated, latin1, badjson, nocaption + tiny, long
    return {
        "listed": readable + 2,  # + empty, garbage
        "readable": readable,
        "problems": {"unreadable_image": 2, "caption_undecodable": 1, "json_broken": 1, "missing_caption": 2},
        "train": n_good + len(special) + 2,  # good + modes + truncated (fails later, in training) + badjson
        "dropped": {"missing_caption": 2, "too_small": 1, "too_elongated": 1},
    }


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def scan(root: Path, **kw):
    return load_or_scan(root, root / ".illustrious" / "manifest.parquet", progress=False, **kw)


def test_scan_counts_every_problem_and_writes_a_report(tmp_path):
    expected = make_image_folder(tmp_path / "data")
    manifest, report, scanned = scan(tmp_path / "data")
    assert scanned
    assert len(manifest) == expected["readable"]
    assert report.counts() == expected["problems"]
    assert sorted(report.paths("unreadable_image")) == ["broken/empty.jpg", "broken/garbage.png"]
    assert report.paths("caption_undecodable") == ["broken/latin1.txt"]
    assert report.paths("json_broken") == ["broken/badjson.json"]
    assert sorted(report.paths("missing_caption")) == ["broken/latin1.png", "broken/nocaption.png"]
    saved = json.loads(report_path(tmp_path / "data" / ".illustrious" / "manifest.parquet").read_text())
    assert saved["counts"] == expected["problems"]
    assert not any(".thumbnails" in p for p in manifest.column("path"))


def test_manifest_records_what_training_needs(tmp_path):
    make_image_folder(tmp_path / "data")
    manifest, _, _ = scan(tmp_path / "data")
    rows = {r["path"]: r for r in manifest.table.to_pylist()}
    rotated = rows["modes/rotated.jpg"]
    assert (rotated["width"], rotated["height"], rotated["orientation"]) == (96, 64, 6)  # upright size
    tagged = rows["set0/deep/good00.jpg"]
    assert tagged["tags_character"] == ["hatsune_miku"] and "long_hair" in tagged["tags_general"]
    assert tagged["tags_meta"] == ["highres"] and tagged["rating"] == "general" and tagged["score"] == 5.0
    assert tagged["created"].startswith("2024-01-02")
    assert rows["set1/good01.png"]["caption"] == "1girl, solo, picture 1"
    assert rows["broken/badjson.png"]["caption"] == "kept by its txt"


def test_second_start_reuses_the_manifest_without_reading_files(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data")
    first, _, _ = scan(tmp_path / "data")

    def fail(*args, **kwargs):
        raise AssertionError("a file was read although the folder did not change")

    monkeypatch.setattr(scan_module, "read_entry", fail)
    second, report, scanned = scan(tmp_path / "data")
    assert not scanned and second.signature == first.signature and len(second) == len(first)
    assert report.counts()["unreadable_image"] == 2  # the report comes back with the manifest


def test_changed_folder_reads_only_new_and_modified_files(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_image_folder(root)
    before, _, _ = scan(root)
    (root / "set1" / "good01.txt").write_text("a new caption")
    os.utime(root / "set1" / "good01.txt", ns=(1, 2_000_000_000 * 10**9))  # a clearly different mtime
    (root / "added.png").write_bytes(encoded(picture(70, 70), "PNG"))
    (root / "added.txt").write_text("added later")
    read = []
    real = scan_module.read_entry
    monkeypatch.setattr(scan_module, "read_entry", lambda r, f: read.append(f.path) or real(r, f))
    after, report, scanned = scan(root)
    unreadable = {"broken/empty.jpg", "broken/garbage.png"}  # never in the manifest, so read again
    assert scanned and set(read) == {"set1/good01.png", "added.png"} | unreadable
    rows = {r["path"]: r for r in after.table.to_pylist()}
    assert rows["set1/good01.png"]["caption"] == "a new caption" and len(after) == len(before) + 1
    assert report.counts()["json_broken"] == 1  # problems of reused rows are still reported


def test_rescan_reads_everything(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", n_good=4)
    scan(tmp_path / "data")
    read = []
    real = scan_module.read_entry
    monkeypatch.setattr(scan_module, "read_entry", lambda r, f: read.append(f.path) or real(r, f))
    manifest, _, scanned = scan(tmp_path / "data", rescan=True)
    assert scanned and len(read) == len(manifest) + 2


def test_other_ranks_wait_for_the_first_and_never_list(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_image_folder(root, n_good=4)
    path = root / ".illustrious" / "manifest.parquet"
    monkeypatch.setattr(manifest_module, "WAIT_POLL_S", 0.01)
    with pytest.raises(TimeoutError, match="first process"):
        load_or_scan(root, path, first_process=False, wait_s=0.05)
    first, _, _ = load_or_scan(root, path, first_process=True, progress=False)
    monkeypatch.setattr(manifest_module, "list_folder", lambda *a: pytest.fail("another rank listed the folder"))
    other, _, scanned = load_or_scan(root, path, first_process=False)
    assert not scanned and other.signature == first.signature


def test_parallel_scan_matches_serial(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_image_folder(root, n_good=12)
    serial, serial_report, _ = scan(root, workers=1)
    monkeypatch.setattr(scan_module, "PARALLEL_MIN", 1)
    monkeypatch.setattr(scan_module, "CHUNK", 8)
    parallel, parallel_report, _ = scan(root, workers=2, rescan=True)
    assert serial.table.to_pylist() == parallel.table.to_pylist()
    assert serial_report.counts() == parallel_report.counts()


def test_datamodule_selects_and_reports(tmp_path):
    expected = make_image_folder(tmp_path / "data")
    dm = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, batch_size=4, num_workers=0)
    dm.check()
    assert len(dm.selection) == expected["train"]
    assert dm.selection.dropped.counts() == expected["dropped"]
    assert dm.selection.dropped.paths("too_small") == ["filtered/tiny.png"]


def test_bad_roots_stop_with_clear_messages(tmp_path):
    with pytest.raises(ConfigError, match="data.root is not set"):
        FolderDataModule(root=None)
    with pytest.raises(FileNotFoundError, match="data.root=.*does not exist"):
        FolderDataModule(root=str(tmp_path / "nowhere")).check()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="No readable images"):
        FolderDataModule(root=str(tmp_path / "empty")).check()
    make_image_folder(tmp_path / "small", n_good=2)
    with pytest.raises(ConfigError, match=r"left out: .*too_small.*data.min_side=768"):
        FolderDataModule(root=str(tmp_path / "small")).check()  # real-flavor defaults: 768 px minimum


def test_problem_report_round_trip(tmp_path):
    report = ProblemReport()
    report.add("json_broken", "a.json", "Expecting value")
    report.add("json_broken", "b.json")
    report.write(tmp_path / "r.json", root="x")
    back = ProblemReport.read(tmp_path / "r.json")
    assert back.counts() == {"json_broken": 2} and back.paths("json_broken") == ["a.json", "b.json"]
    assert "2 json_broken" in back.summary()


def test_manifest_of_another_version_is_rescanned(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a"]}), path)
    assert read_manifest(path) is None
