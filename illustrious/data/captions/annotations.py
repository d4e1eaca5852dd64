"""Derived caption columns, stored beside the manifest in `annotations.parquet` and joined onto it by path.

The manifest's schema is fixed (a rescan rewrites it), so the annotation command writes its own table:
path, file_size, mtime_ns (the image's stamp when measured), score_percentile, score_tag, year_tag,
control_tags and the raw image statistics. Joining drops rows whose stamp no longer matches (the image
changed: annotate again), so a stale measurement never reaches a caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from illustrious.data.captions.derived import (
    SCORE_TAGS,
    YEAR_TAGS,
    parse_month,
    score_percentiles,
    score_tags,
    year_tag,
)
from illustrious.data.captions.image_stats import STATISTICS

FILE_NAME = "annotations.parquet"
STAT_COLUMNS = (*STATISTICS, "saturation_spread")
SCHEMA = pa.schema([
    ("path", pa.string()), ("file_size", pa.int64()), ("mtime_ns", pa.int64()),
    ("score_percentile", pa.float64()), ("score_tag", pa.string()), ("year_tag", pa.string()),
    ("control_tags", pa.list_(pa.string())), *[(f"stat_{s}", pa.float32()) for s in STAT_COLUMNS],
])
DERIVED = ("score_percentile", "score_tag", "year_tag", "control_tags")


def annotations_path(manifest_path: Path) -> Path:
    return Path(manifest_path).with_name(FILE_NAME)


def derive_metadata_tags(table: pa.Table, window_months: int = 12, min_pool: int = 50,
                         score_bounds: Sequence = SCORE_TAGS, year_bounds: Sequence = YEAR_TAGS) -> dict[str, list]:
    """Score and year tags for every manifest row (columns score, rating, created)."""
    created = table.column("created").to_pylist()
    months = np.array([m if (m := parse_month(c)) is not None else -1 for c in created])
    scores = np.array([np.nan if s is None else s for s in table.column("score").to_pylist()], dtype=np.float64)
    ratings = np.array([r or "" for r in table.column("rating").to_pylist()], dtype=object)
    pct = score_percentiles(scores, months, ratings, window_months, min_pool)
    return {"score_percentile": [None if np.isnan(p) else float(p) for p in pct],
            "score_tag": score_tags(pct, score_bounds), "year_tag": [year_tag(c, year_bounds) for c in created]}


def annotation_table(table: pa.Table, derived: dict[str, list], stats: Sequence[dict | None],
                     control: Sequence[list[str] | None]) -> pa.Table:
    columns = {"path": table.column("path"), "file_size": table.column("file_size"),
               "mtime_ns": table.column("mtime_ns"), **derived, "control_tags": list(control)}
    for s in STAT_COLUMNS:
        columns[f"stat_{s}"] = [None if st is None else st[s] for st in stats]
    return pa.table(columns, schema=SCHEMA)


def write_annotations(path: Path, table: pa.Table, thresholds: dict | None) -> None:
    import json

    from illustrious.utils.files import atomic_save

    meta = {"illustrious.control_thresholds": json.dumps(thresholds)} if thresholds else {}
    table = table.replace_schema_metadata(meta)
    atomic_save(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_annotations(path: Path) -> pa.Table | None:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    return table if table.schema.equals(SCHEMA, check_metadata=False) else None


def join_annotations(table: pa.Table, annotations: pa.Table | None) -> pa.Table:
    """`table` (manifest rows) with the DERIVED columns (null where missing or stale), row order kept."""
    n = table.num_rows
    columns = {"score_percentile": [None] * n, "score_tag": [None] * n, "year_tag": [None] * n,
               "control_tags": [None] * n}
    if annotations is not None and annotations.num_rows:
        at = {p: i for i, p in enumerate(annotations.column("path").to_pylist())}
        sizes, times = annotations.column("file_size").to_pylist(), annotations.column("mtime_ns").to_pylist()
        values = {c: annotations.column(c).to_pylist() for c in DERIVED}
        for row, (path, size, mtime) in enumerate(zip(table.column("path").to_pylist(),
                                                      table.column("file_size").to_pylist(),
                                                      table.column("mtime_ns").to_pylist(), strict=True)):
            i = at.get(path)
            if i is not None and sizes[i] == size and times[i] == mtime:
                for c in DERIVED:
                    columns[c][row] = values[c][i]
    for c in DERIVED:
        if c in table.column_names:
            table = table.drop_columns([c])
        table = table.append_column(pa.field(c, SCHEMA.field(c).type), pa.array(columns[c], SCHEMA.field(c).type))
    return table
