"""Derived tags: score percentiles per time window and rating, year tags, control tokens from image statistics."""

import json

import numpy as np
import pytest

from illustrious.data.captions.derived import (
    parse_month,
    score_percentiles,
    score_tags,
    year_tag,
)
from illustrious.data.captions.image_stats import (
    LEVEL_TAGS,
    STATISTICS,
    control_tags,
    fit_thresholds,
    image_statistics,
    write_thresholds,
)


def test_year_tags():
    cases = {"2005-01-01": "oldest", "2017-12-31T23:00:00.000-05:00": "oldest", "2018-01-01": "old",
             "2019-06-01": "old", "2020-03-01": "modern", "2021-01-01": "recent", "2022-12-31": "recent",
             "2023-01-01T00:00:00Z": "newest", "2026-05-01": "newest"}
    for created, tag in cases.items():
        assert year_tag(created) == tag, created
    assert year_tag(None) is None and year_tag("yesterday") is None


def test_score_tags_at_the_published_percentiles():
    p = np.array([0.0, 8.0, 8.1, 20.0, 59.9, 60.0, 81.0, 82.5, 92.0, 92.1, 100.0, np.nan])
    assert score_tags(p) == ["worst quality", "worst quality", "bad quality", "bad quality", "average quality",
                             "average quality", "good quality", "best quality", "best quality", "masterpiece",
                             "masterpiece", None]


def test_percentiles_follow_drift_and_rating():
    rng = np.random.default_rng(0)
    n = 4000
    years = rng.integers(2010, 2024, n)
    months = years * 12 + rng.integers(0, 12, n)
    ratings = rng.choice(["general", "explicit"], n)
    # scores grow tenfold over the years, and explicit posts score twice as high
    base = rng.lognormal(0, 0.5, n)
    scores = base * (10 ** ((years - 2010) / 13)) * np.where(ratings == "explicit", 2.0, 1.0)
    pct = score_percentiles(scores, months, ratings, window_months=12, min_pool=20)
    tags = score_tags(pct)
    share = {t: tags.count(t) / n for t in set(tags)}
    # inside each window and rating the bins hold their published shares, whatever the drift
    assert abs(share["worst quality"] - 0.08) < 0.02 and abs(share["masterpiece"] - 0.08) < 0.02
    assert abs(share["average quality"] - 0.40) < 0.03
    for year in (2010, 2023):  # every era gets its masterpieces
        in_year = pct[years == year]
        assert 0.04 < np.mean(in_year > 92) < 0.12
    # a global ranking would give the old years none
    assert np.mean(score_percentiles(scores, np.full(n, -1), ratings)[years == 2010] > 92) < 0.01
    # the same score ranks lower among explicit posts
    same = score_percentiles(np.array([5.0, 5.0]), np.array([-1, -1]), np.array(["general", "explicit"]))
    assert np.isnan(score_percentiles(np.array([np.nan]), np.array([0]), np.array(["general"])))[0]
    assert same[0] > 0 and same[1] == pytest.approx(50.0)  # alone in its pool: mid-rank


def test_parse_month():
    assert parse_month("2019-05-03T12:00:00.000-04:00") == 2019 * 12 + 4
    assert parse_month("") is None


def test_image_statistics_order_images():
    rng = np.random.default_rng(0)
    grey = np.full((64, 64, 3), 128, np.uint8)
    dark = np.full((64, 64, 3), 20, np.uint8)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 230
    rainbow = np.stack([*np.meshgrid(np.linspace(0, 255, 64), np.linspace(255, 0, 64)), np.full((64, 64), 128.0)],
                       -1).astype(np.uint8)
    s = {name: image_statistics(img) for name, img in
         {"grey": grey, "dark": dark, "noise": noise, "red": red, "rainbow": rainbow}.items()}
    assert s["dark"]["brightness"] < s["grey"]["brightness"]
    assert s["grey"]["contrast"] == 0 and s["noise"]["contrast"] > 40
    assert s["noise"]["sharpness"] > 100 * (s["rainbow"]["sharpness"] + 1)
    assert s["grey"]["colorfulness"] == 0 and s["red"]["colorfulness"] == pytest.approx(0.3 * np.hypot(230, 115))
    assert s["red"]["saturation"] == pytest.approx(255) and s["grey"]["saturation"] == 0
    assert s["red"]["dynamic_colors"] == 0 and s["rainbow"]["dynamic_colors"] > 2


def test_thresholds_fitted_and_written(tmp_path):
    rng = np.random.default_rng(1)
    stats = [image_statistics(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) // rng.integers(1, 8))
             for _ in range(40)]
    columns = {k: [s[k] for s in stats] for k in stats[0]}
    fitted = fit_thresholds(columns)
    tags = [control_tags(s, fitted) for s in stats]
    for i, name in enumerate(STATISTICS):  # four levels, about a quarter of the images each
        counts = [sum(t[i] == level for t in tags) for level in LEVEL_TAGS[name]]
        assert min(counts) >= 6, (name, counts)
    write_thresholds(tmp_path / "t.json", fitted, colorfulness_rule=False)
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["statistics"]["brightness"]["thresholds"] == fitted["brightness"]


def test_colorfulness_rule():
    vivid = {"saturation": 130.0, "saturation_spread": 40.0}
    spread = {"saturation": 130.0, "saturation_spread": 60.0}
    thresholds = {n: [1.0, 2.0, 3.0] for n in STATISTICS}
    base = {n: 0.0 for n in STATISTICS}
    assert "vibrant colors" in control_tags({**base, **vivid}, thresholds, colorfulness_rule=True)
    assert not any("colors" in t for t in control_tags({**base, **spread}, thresholds, colorfulness_rule=True))
    assert "muted colors" in control_tags({**base, **spread}, thresholds)
