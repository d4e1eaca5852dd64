"""Manifest load + filtering + bucket assignment + one epoch of bucket batches, for a million images.

A synthetic manifest with Danbooru-like rows (sizes from a mix of common aspect ratios and resolutions,
~30 tags per image, a caption) is written once; each round then times what a training start does with
it: read the Parquet file, apply the preprocessing filters, assign buckets (0.15-2.25 MP, multiple 32)
and build the first epoch's batches of the sampler. For scale, the same bucket assignment is also timed
as a per-image Python loop (the shape of kohya's `BucketManager.select_bucket`, which issue 1866 reports as
too slow at 1.3M images), on a slice, and extrapolated.

It also scans a real folder of `--scan-files` small JPEGs with .txt captions, twice: the first start
reads every header and sidecar, the second only lists the folder and finds the manifest up to date.

    uv run python benchmarks/data_manifest.py [--rows 1000000] [--rounds 5] [--scan-files 5000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, median
from illustrious.data.images.buckets import BucketSet
from illustrious.data.images.settings import ImageSettings
from illustrious.data.index.manifest import rows_to_table, write_manifest
from illustrious.data.index.selection import select
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.data.loading.sampler import BucketBatchSampler

SIZES = [(832, 1216), (1216, 832), (1024, 1024), (896, 1152), (1152, 896), (768, 1344), (2480, 3508), (3508, 2480),
         (1500, 2000), (2000, 1500), (1920, 1080), (1080, 1920), (600, 800), (4000, 6000), (700, 5000), (3000, 3000)]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vocab = [f"tag_{i}" for i in range(5000)]
    base = rng.integers(0, len(SIZES), n)
    jitter = rng.uniform(0.8, 1.25, n)
    rows = []
    for i in range(n):
        w, h = SIZES[base[i]]
        tags = [vocab[j] for j in rng.integers(0, len(vocab), 30)]
        rows.append({
            "path": f"{i // 10000:03d}/{i:08d}.jpg", "width": int(w * jitter[i]), "height": int(h * jitter[i]),
            "orientation": 1, "format": "JPEG", "file_size": 500_000, "mtime_ns": 1_700_000_000_000_000_000 + i,
            "caption": None, **{f"tags_{c}": (tags if c == "general" else tags[:1]) for c in TAG_CATEGORIES},
            "rating": "general", "score": float(i % 100), "created": "2024-01-01T00:00:00", "problems": [],
        })
    return rows


def naive_assign(widths, heights, buckets: BucketSet, max_pixels: int) -> list[int]:
    """Per image: pick the level, then scan its buckets for the nearest log aspect ratio."""
    levels = buckets.level_areas
    by_level = {a: [i for i, b in enumerate(buckets.sizes) if buckets.level_of(b) == a] for a in levels}
    out = []
    for w, h in zip(widths, heights, strict=True):
        area = min(w * h, max_pixels) * 1.05**2
        level = max([a for a in levels if a <= area], default=levels[0])
        ar = math.log(w / h)
        out.append(min(by_level[level], key=lambda i: abs(math.log(buckets.sizes[i][0] / buckets.sizes[i][1]) - ar)))
    return out


def scan_starts(n: int, workers: int) -> tuple[float, float]:
    """Seconds for the first start (full scan) and the second (listing only) over `n` files."""
    from PIL import Image

    from illustrious.data.index.manifest import load_or_scan

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = io_bytes(Image.new("RGB", (640, 960), (90, 120, 150)))
        for i in range(n):
            folder = root / f"{i // 1000:03d}"
            folder.mkdir(exist_ok=True)
            (folder / f"{i:07d}.jpg").write_bytes(data)
            (folder / f"{i:07d}.txt").write_text("1girl, solo")
        manifest = root / ".illustrious" / "manifest.parquet"
        t0 = time.perf_counter()
        _, _, scanned = load_or_scan(root, manifest, workers=workers, progress=False)
        t1 = time.perf_counter()
        _, _, rescanned = load_or_scan(root, manifest, workers=workers, progress=False)
        t2 = time.perf_counter()
        assert scanned and not rescanned
        return t1 - t0, t2 - t1


def io_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--naive-rows", type=int, default=50_000)
    parser.add_argument("--scan-files", type=int, default=5000)
    parser.add_argument("--scan-workers", type=int, default=2)
    args = parser.parse_args()
    from illustrious.data.index.manifest import read_manifest

    settings = ImageSettings(min_side=768, bucket_multiple=32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        t = time.perf_counter()
        write_manifest(path, rows_to_table(synthetic_rows(args.rows)), "synthetic", Path(tmp))
        print(f"wrote {args.rows} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s")
        phases: dict[str, list[float]] = {"read": [], "filter": [], "assign": [], "epoch": [], "total": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            manifest = read_manifest(path)
            t1 = time.perf_counter()
            selection = select(manifest, settings)
            t2 = time.perf_counter()
            buckets = BucketSet(*settings.bucket_area_range, settings.bucket_step, 32, settings.max_aspect)
            ids = buckets.assign(selection.table.column("width").to_numpy(),
                                 selection.table.column("height").to_numpy(), settings.max_pixels)
            t3 = time.perf_counter()
            sampler = BucketBatchSampler(ids, 8, seed=0, rank=0, world_size=8)
            first = len(sampler.rank_batches(0))
            t4 = time.perf_counter()
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                phases[k].append(v)
        w = selection.table.column("width").to_numpy()[: args.naive_rows]
        h = selection.table.column("height").to_numpy()[: args.naive_rows]
        t = time.perf_counter()
        naive = naive_assign(w, h, buckets, settings.max_pixels)
        naive_s = (time.perf_counter() - t) * len(selection) / len(w)
        assert naive == ids[: len(w)].tolist(), "the naive loop and the vectorised assignment disagree"
    first, second = scan_starts(args.scan_files, args.scan_workers) if args.scan_files else (0.0, 0.0)
    print(f"machine: {machine()}")
    print(f"{len(selection)} of {args.rows} rows kept, {len(buckets)} buckets, {first} batches of 8 on rank 0 of 8")
    for k, v in phases.items():
        print(f"  {k:7s} median {median(v):.2f}s  (rounds: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"  per-image Python assignment (extrapolated from {len(w)} rows): {naive_s:.1f}s "
          f"= {naive_s / median(phases['assign']):.0f}x the vectorised assignment")
    if args.scan_files:
        print(f"scan of {args.scan_files} JPEG+txt pairs ({args.scan_workers} worker processes): first start "
              f"{first:.1f}s ({args.scan_files / first:.0f} files/s), second start {second:.2f}s "
              f"({args.scan_files / second:.0f} files/s, listing only)")


if __name__ == "__main__":
    main()
