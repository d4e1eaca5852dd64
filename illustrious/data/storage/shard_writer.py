"""Writing a scanned folder as WebDataset tar shards, for clusters that stream data instead of listing files.

Each sample is `<key>.<ext>` (the image: its original bytes, or re-encoded upright RGB within the pixel
budget) and `<key>.json` (path, upright size, orientation, caption, tags by category, rating, score,
date, and the derived caption columns of `python -m illustrious.annotate` -- score_percentile, score_tag,
year_tag, control_tags -- where the folder is annotated): everything the folder source builds a sample's caption
record from, so the stream builds the same record. Shards hold `shard_size` samples each and are written atomically; `index.json` lists them with
their sample counts (the reader sizes its epochs from it). Rerunning skips shards already written for the
same images, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import webdataset as wds

from illustrious.data.captions.annotations import DERIVED
from illustrious.data.images.decode import ImageError, decode, open_image
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.report import ProblemReport
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.utils.files import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

ENCODINGS = {"original": None, "jpg": "JPEG", "webp": "WEBP", "png": "PNG"}
INDEX = "index.json"


def sample_metadata(row: dict) -> dict:
    return {"path": row["path"], "width": row["width"], "height": row["height"], "orientation": row["orientation"],
            "caption": row["caption"], "tags": {c: row[f"tags_{c}"] or [] for c in TAG_CATEGORIES},
            "rating": row["rating"], "score": row["score"], "created": row["created"],
            **{c: row[c] for c in DERIVED if row.get(c) is not None}}  # annotated rows only


def metadata_digest(chunk) -> str:
    """What a shard's samples say about themselves (not their pixels): a rerun rewrites a shard whose captions,
    tags or derived annotation columns changed although its images did not."""
    text = json.dumps([sample_metadata(row) for row in chunk.to_pylist()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reencode(path: Path, row: dict, settings: ImageSettings, fmt: str, quality: int) -> tuple[bytes, dict]:
    """Upright RGB within the pixel budget (Lanczos), encoded as `fmt`; the metadata follows the pixels."""
    image = open_image(path, settings.bomb_pixels)
    with image:
        upright = decode(image, row["orientation"])
    oh, ow = settings.original_size(upright.width, upright.height)
    if (ow, oh) != upright.size:
        from PIL import Image

        upright = upright.resize((ow, oh), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    upright.save(buffer, fmt, quality=quality) if fmt != "PNG" else upright.save(buffer, fmt)
    return buffer.getvalue(), {**sample_metadata(row), "width": ow, "height": oh, "orientation": 1}


def write_shards(root: Path, table, out: Path, settings: ImageSettings, *, shard_size: int = 1000,
                 encoding: str = "original", quality: int = 95, progress: bool = True) -> dict:
    """Write `table`'s rows (a selection of a manifest) under `out`; returns the index."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: must be one of {', '.join(ENCODINGS)}")
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_index(out)
    done = {s["url"]: s for s in previous.get("shards", [])}
    rows_total = table.num_rows
    shards, problems = [], ProblemReport()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rows_total, desc="Writing shards", unit="img")
    for number, start in enumerate(range(0, rows_total, shard_size)):
        chunk = table.slice(start, shard_size)
        paths = chunk.column("path").to_pylist()
        name = f"shard-{number:06d}.tar"
        identity = {"first": paths[0], "last": paths[-1], "rows": len(paths), "encoding": encoding,
                    "metadata": metadata_digest(chunk)}
        entry = done.get(name)
        if entry and (out / name).is_file() and all(entry.get(k) == v for k, v in identity.items()):
            shards.append(entry)  # written by an earlier run for the same images
            problems.extend((p["reason"], p["path"], p["detail"]) for p in entry.get("problems", []))
        else:
            shard_problems = ProblemReport()
            count = _write_one(root, chunk, out / name, start, settings, encoding, quality, shard_problems)
            problems.extend((r, p, d) for r, items in shard_problems.problems.items() for p, d in items)
            shards.append({"url": name, "count": count, **identity,
                           "problems": [{"reason": r, "path": p, "detail": d}
                                        for r, items in shard_problems.problems.items() for p, d in items]})
            _write_index(out, shards, settings, encoding)  # after every shard: an interruption keeps them
        if bar:
            bar.update(len(paths))
    if bar:
        bar.close()
    index = _write_index(out, shards, settings, encoding)
    log.info("Wrote %d samples in %d shards to %s (%s).", index["total"], len(shards), out, problems.summary())
    return index


def _write_one(root: Path, chunk, path: Path, first_key: int, settings: ImageSettings, encoding: str,
               quality: int, problems: ProblemReport) -> int:
    count = 0
    with atomic_path(path) as tmp, wds.TarWriter(str(tmp)) as sink:
        for offset, row in enumerate(chunk.to_pylist()):
            source = root / row["path"]
            try:
                if ENCODINGS[encoding] is None:
                    data, meta = source.read_bytes(), sample_metadata(row)
                    ext = source.suffix.lower().lstrip(".")
                else:
                    data, meta = reencode(source, row, settings, ENCODINGS[encoding], quality)
                    ext = encoding
            except (ImageError, OSError) as e:
                reason = e.reason if isinstance(e, ImageError) else "unreadable_image"
                problems.add(reason, row["path"], str(e))
                continue
            # keys must not contain dots (WebDataset splits a member's name at the first one)
            sink.write({"__key__": f"{first_key + offset:09d}", ext: data,
                        "json": json.dumps(meta, ensure_ascii=False).encode()})
            count += 1
    return count


def _read_index(out: Path) -> dict:
    try:
        return json.loads((out / INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _write_index(out: Path, shards: list[dict], settings: ImageSettings, encoding: str) -> dict:
    index = {"shards": shards, "total": sum(s["count"] for s in shards), "encoding": encoding,
             "max_megapixels": settings.max_megapixels}
    atomic_write_json(out / INDEX, index)
    return index
