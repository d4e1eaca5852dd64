"""Derived tags, computed once over a whole dataset by `python -m illustrious.annotate`.

- score tags: a post's score as a percentile among posts of the same rating inside a moving time window
  (scores drift: a 2012 post with 30 favourites did as well as a 2023 post with 300). Percentile bounds:
  worst <= 8 %, bad <= 20 %, average <= 60 %, good <= 82 %, best <= 92 %, masterpiece above (Illustrious).
- year tags: oldest <= 2017, old <= 2019, modern 2020, recent <= 2022, newest >= 2023.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np

SCORE_TAGS = (("worst quality", 8.0), ("bad quality", 20.0), ("average quality", 60.0), ("good quality", 82.0),
              ("best quality", 92.0), ("masterpiece", 100.0))
YEAR_TAGS = (("oldest", 2017), ("old", 2019), ("modern", 2020), ("recent", 2022), ("newest", 9999))


def parse_month(created: str | None) -> int | None:
    """'2019-05-03T12:00:00.000-04:00' (or any ISO-8601 date) -> months since year 0; None if unreadable."""
    if not created:
        return None
    try:
        when = datetime.fromisoformat(created.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            when = datetime.strptime(created.strip()[:10], "%Y-%m-%d")
        except ValueError:
            return None
    return when.year * 12 + when.month - 1


def year_tag(created: str | None, bounds: Sequence[tuple[str, int]] = YEAR_TAGS) -> str | None:
    month = parse_month(created)
    if month is None:
        return None
    year = month // 12
    return next(tag for tag, last in bounds if year <= last)


def score_percentiles(scores: np.ndarray, months: np.ndarray, ratings: np.ndarray, window_months: int = 12,
                      min_pool: int = 50) -> np.ndarray:
    """Percentile (0-100, mid-rank) of each score among the scores of its rating within +-window_months/2.

    NaN scores stay NaN. Rows without a date (month < 0), and windows with fewer than `min_pool` scores,
    are ranked against all scores of their rating.
    """
    scores = np.asarray(scores, dtype=np.float64)
    months = np.asarray(months, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=object)
    out = np.full(len(scores), np.nan)
    half = window_months // 2
    for rating in {r for r in ratings.tolist()}:
        rows = np.flatnonzero((ratings == rating) & ~np.isnan(scores))
        if not len(rows):
            continue
        everything = np.sort(scores[rows])
        dated = rows[months[rows] >= 0]
        order = dated[np.argsort(months[dated], kind="stable")]
        sorted_months = months[order]
        for month in np.unique(sorted_months):
            lo, hi = np.searchsorted(sorted_months, [month - half, month + half + 1])
            pool = np.sort(scores[order[lo:hi]])
            these = order[np.searchsorted(sorted_months, month):np.searchsorted(sorted_months, month + 1)]
            out[these] = mid_rank(pool if len(pool) >= min_pool else everything, scores[these])
        undated = rows[months[rows] < 0]
        out[undated] = mid_rank(everything, scores[undated])
    return out


def mid_rank(pool: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Percent of `pool` below each value, ties counted half (so equal scores share one percentile)."""
    below = np.searchsorted(pool, values, side="left")
    upto = np.searchsorted(pool, values, side="right")
    return 100.0 * (below + upto) / (2 * len(pool))


def score_tags(percentiles: np.ndarray, bounds: Sequence[tuple[str, float]] = SCORE_TAGS) -> list[str | None]:
    edges = np.array([b for _, b in bounds[:-1]])
    names = [t for t, _ in bounds]
    index = np.searchsorted(edges, percentiles, side="left")  # p <= 8 -> worst, 8 < p <= 20 -> bad, ...
    return [None if np.isnan(p) else names[i] for p, i in zip(percentiles.tolist(), index.tolist(), strict=True)]
