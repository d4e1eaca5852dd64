"""Which manifest rows train: the preprocessing filters (size, aspect ratio, bombs) and the caption rule (index/labels.py).

Filters run on the manifest's columns, vectorised, so changing `data.min_side` never needs a rescan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.labels import has_caption_rows
from illustrious.data.index.manifest import Manifest
from illustrious.data.index.report import ProblemReport

log = logging.getLogger(__name__)


@dataclass
class Selection:
    table: pa.Table  # the rows that train
    dropped: ProblemReport  # reason -> paths: decompression_bomb, too_small, too_elongated, missing_caption

    def __len__(self) -> int:
        return self.table.num_rows


def select(manifest: Manifest, settings: ImageSettings, require_caption: bool = True) -> Selection:
    table = manifest.table
    w = manifest.column("width").astype(np.int64)
    h = manifest.column("height").astype(np.int64)
    short, long = np.minimum(w, h), np.maximum(w, h)
    reasons = [  # first matching reason wins
        ("decompression_bomb", w * h > settings.bomb_pixels),
        ("too_small", short < settings.min_side),
        ("too_elongated", long > settings.max_aspect * short),
    ]
    if require_caption:
        reasons.append(("missing_caption", ~has_caption_rows(table)))
    keep = np.ones(len(w), dtype=bool)
    dropped = ProblemReport()
    for reason, hit in reasons:
        hit = hit & keep
        if hit.any():
            dropped.problems[reason] = [(p, "") for p in table.column("path").filter(pa.array(hit)).to_pylist()]
            keep &= ~hit
    return Selection(table.filter(pa.array(keep)), dropped)
