"""`python -m illustrious.annotate data.root=/data/anime`

Computes a folder's derived caption tags once and stores them beside its manifest (annotations.parquet):
- score tags (worst ... masterpiece) from post scores as percentiles per rating inside a moving time window;
- year tags (oldest ... newest) from post dates;
- control tokens (contrast, brightness, sharpness, dynamic colours, colourfulness, saturation; four levels
  each) from image statistics, with thresholds fitted on this dataset's percentiles and written to
  control_thresholds.json beside the manifest (or given: control_thresholds=<that file>).
Training with `captions=illustrious` / `captions=bigasp` then reads them. Rerun after adding images: rows of
unchanged images keep their measured statistics.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from illustrious.config import CONF_DIR
from illustrious.data.captions.annotations import (
    STAT_COLUMNS,
    annotation_table,
    annotations_path,
    derive_metadata_tags,
    read_annotations,
    write_annotations,
)
from illustrious.data.captions.image_stats import (
    control_tags,
    fit_thresholds,
    image_statistics,
    write_thresholds,
)
from illustrious.data.images.decode import ImageError, decode, exif_orientation, open_image
from illustrious.data.index.manifest import default_location, load_or_scan
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)
BOMB_PIXELS = 178_956_970
THUMBNAIL = 256  # statistics are measured on the image fitted into this square (fast, and scale-free enough)


def measure(path: Path) -> dict | None:
    """Image statistics of one file, or None if it does not decode."""
    try:
        with open_image(path, BOMB_PIXELS) as image:
            upright = decode(image, exif_orientation(image))
            upright.thumbnail((THUMBNAIL, THUMBNAIL))
            return image_statistics(np.asarray(upright.convert("RGB")))
    except (ImageError, OSError):
        return None


def measure_all(root: Path, table, previous, workers: int) -> list[dict | None]:
    """Statistics per manifest row, reusing `previous` annotations of images whose stamp is unchanged."""
    reuse = {}
    if previous is not None:
        for row in previous.to_pylist():
            if row["stat_brightness"] is not None:
                reuse[(row["path"], row["file_size"], row["mtime_ns"])] = {s: row[f"stat_{s}"] for s in STAT_COLUMNS}
    keys = list(zip(table.column("path").to_pylist(), table.column("file_size").to_pylist(),
                    table.column("mtime_ns").to_pylist(), strict=True))
    todo = [i for i, k in enumerate(keys) if k not in reuse]
    stats: list[dict | None] = [reuse.get(k) for k in keys]
    paths = [root / keys[i][0] for i in todo]
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as pool:
            measured = list(pool.map(measure, paths, chunksize=32))
    else:
        measured = [measure(p) for p in paths]
    for i, s in zip(todo, measured, strict=True):
        stats[i] = s
    log.info("Image statistics: %d measured, %d reused, %d failed to decode.", len(todo), len(keys) - len(todo),
             sum(s is None for s in measured))
    return stats


def annotate(root: str | Path, manifest: str | Path | None = None, *, control_tokens: bool = True,
             control_thresholds: str | None = None, colorfulness_rule: bool = False, window_months: int = 12,
             min_pool: int = 50, workers: int = 4, progress: bool = True) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={str(root)!r} is not a folder.")
    manifest_path = Path(manifest).expanduser() if manifest else default_location(root)
    table = load_or_scan(root, manifest_path, workers=workers, progress=progress)[0].table
    out = annotations_path(manifest_path)
    derived = derive_metadata_tags(table, window_months, min_pool)
    n = table.num_rows
    stats: list[dict | None] = [None] * n
    control: list[list[str] | None] = [None] * n
    thresholds = None
    if control_tokens:
        stats = measure_all(root, table, read_annotations(out), workers)
        if control_thresholds:
            doc = json.loads(Path(control_thresholds).expanduser().read_text())
            thresholds = {k: v["thresholds"] for k, v in doc["statistics"].items()}
        else:
            measured = [s for s in stats if s is not None]
            if not measured:
                raise ConfigError(f"No image under {root} decoded; nothing to fit control-token thresholds on.")
            thresholds = fit_thresholds({k: [s[k] for s in measured] for k in measured[0]})
            write_thresholds(out.with_name("control_thresholds.json"), thresholds, colorfulness_rule)
        control = [None if s is None else control_tags(s, thresholds, colorfulness_rule) for s in stats]
    write_annotations(out, annotation_table(table, derived, stats, control), thresholds)
    log.info("Annotated %d images -> %s; score tags %s; year tags %s", n, out,
             dict(Counter(derived["score_tag"])), dict(Counter(derived["year_tag"])))
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="annotate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if not cfg.data.get("root"):
        raise ConfigError("Set data.root=<image folder> (the folder training reads with data=folder).")
    path = annotate(cfg.data.root, cfg.data.get("manifest"), control_tokens=cfg.control_tokens,
                    control_thresholds=cfg.control_thresholds, colorfulness_rule=cfg.colorfulness_rule,
                    window_months=cfg.window_months, min_pool=cfg.min_pool, workers=cfg.workers,
                    progress=cfg.progress)
    print(f"annotations: {path}")


if __name__ == "__main__":
    main()
