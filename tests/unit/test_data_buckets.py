"""Aspect-ratio buckets: generation over an area range, nearest assignment, the backbone's pixel multiple."""

from __future__ import annotations

import math

import numpy as np
import pytest

from illustrious.data.images.buckets import UPSCALE_TOLERANCE, BucketSet
from illustrious.data.sources.folder_datamodule import FolderDataModule
from illustrious.errors import ConfigError
from tests.unit.test_data_folder import SMALL, make_image_folder

ILLUSTRIOUS = dict(min_area=150_000, max_area=2_250_000, step=128, multiple=32, max_aspect=10.0)


def test_buckets_cover_the_area_range_in_multiples():
    buckets = BucketSet(**ILLUSTRIOUS)
    sizes = np.array(buckets.sizes)
    assert (sizes % 32 == 0).all()
    areas = sizes[:, 0] * sizes[:, 1]
    assert areas.max() <= 2_250_000 and areas.min() >= 150_000 * 0.5
    assert (np.maximum(sizes[:, 0], sizes[:, 1]) <= 10 * np.minimum(sizes[:, 0], sizes[:, 1])).all()
    assert len(set(map(tuple, sizes))) == len(sizes)
    assert {(1024, 1024), (832, 1248), (1248, 832), (512, 512)} <= set(buckets.sizes)
    assert round(math.sqrt(buckets.level_areas[0])) == 387 and round(math.sqrt(buckets.level_areas[-1])) == 1500


def test_assignment_is_the_nearest_aspect_at_the_right_level():
    buckets = BucketSet(**ILLUSTRIOUS)
    rng = np.random.default_rng(0)
    w, h = rng.integers(400, 5000, 2000), rng.integers(400, 5000, 2000)
    w, h = np.where(np.maximum(w, h) > 10 * np.minimum(w, h), h, w), h
    ids = buckets.assign(w, h, max_pixels=4_000_000)
    levels = np.array(buckets.level_areas)
    for i in range(len(w)):  # brute force: the level rule, then the nearest log aspect ratio within it
        area = min(w[i] * h[i], 4_000_000) * UPSCALE_TOLERANCE**2
        level = levels[max(0, np.searchsorted(levels, area, side="right") - 1)]
        candidates = [b for b in buckets.sizes if buckets.level_of(b) == level]
        best = min(abs(math.log(b[0] / b[1]) - math.log(w[i] / h[i])) for b in candidates)
        chosen = buckets[ids[i]]
        assert buckets.level_of(chosen) == level
        assert abs(math.log(chosen[0] / chosen[1]) - math.log(w[i] / h[i])) == pytest.approx(best)


def test_levels_never_upscale_much():
    buckets = BucketSet(**ILLUSTRIOUS)
    assert buckets[buckets.assign([1024], [1024])[0]] == (1024, 1024)
    assert buckets[buckets.assign([832], [1216])[0]] == (832, 1248)  # SDXL's classic size stays at 1 MP
    top = buckets[buckets.assign([6000], [4000], max_pixels=4_000_000)[0]]
    assert top[0] * top[1] <= 2_250_000 and top[0] * top[1] > 1_900_000  # the 4 MP budget lands on the top level
    for w, h in [(900, 700), (3000, 400), (640, 1600)]:
        bw, bh = buckets[buckets.assign([w], [h])[0]]
        assert max(bw / w, bh / h) < UPSCALE_TOLERANCE * 1.08  # bucket sides at most a little beyond the image


def test_a_million_assignments_are_fast_enough_to_not_matter():
    buckets = BucketSet(**ILLUSTRIOUS)
    w = np.random.default_rng(0).integers(500, 4000, 1_000_000)
    ids = buckets.assign(w, w[::-1], max_pixels=4_000_000)
    assert ids.shape == (1_000_000,) and ids.min() >= 0 and ids.max() < len(buckets)


def test_no_bucket_fits_is_a_config_error():
    with pytest.raises(ConfigError, match="data.bucket_megapixels"):
        BucketSet(min_area=100, max_area=200, step=8, multiple=64, max_aspect=2)


def test_bucket_multiple_must_fit_the_backbone(tmp_path):
    make_image_folder(tmp_path / "data", n_good=4)
    dm = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, bucket_multiple=12, num_workers=0)
    with pytest.raises(ConfigError, match=r"data.bucket_multiple=12 .* pixel_multiple=8"):
        dm.check_pixel_multiple(8)
    dm = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, bucket_multiple=16, num_workers=0)
    dm.check_pixel_multiple(8)  # a multiple of the backbone's is fine
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in dm.buckets.sizes)
    dm = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, num_workers=0)
    dm.check_pixel_multiple(4)  # null adopts the backbone's
    assert dm.settings.bucket_multiple == 4 and all(w % 4 == 0 and h % 4 == 0 for w, h in dm.buckets.sizes)
