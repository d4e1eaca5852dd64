"""Data loader throughput (images/s) on real JPEGs: decode + orient + resize + crop into buckets.

A folder of photo-sized JPEGs (1.2-6 MP, several aspect ratios, with film-grain noise so they compress
like real pictures) is scanned once; then rounds alternate:
  naive    a per-image Pillow loop in one process, as a script without a data pipeline does it:
           open, exif_transpose, convert("RGB"), Lanczos-resize the whole image to cover the bucket,
           centre-crop, to a float tensor;
  ours-0   the `data=folder` DataLoader with num_workers=0 (the same work, done our way: JPEG draft
           decoding at a reduced DCT scale, Lanczos on the kept region only);
  ours-N   the same DataLoader with N worker processes.
Two bucket settings: the real-flavor defaults (0.15-2.25 MP: most images keep most of their pixels, so
decoding and Lanczos dominate for both), and one 1024^2 level (the common SDXL finetune, where large JPEGs
decode at half or quarter scale). Medians over rounds; every sample counts, padding repeats included.

    uv run python benchmarks/data_loader.py [--images 96] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmarks.common import machine, median
from illustrious.data.images.buckets import plan_crop
from illustrious.data.sources.folder_datamodule import FolderDataModule

SIZES = [(1216, 832), (832, 1216), (1024, 1024), (1500, 2000), (2000, 1500), (2480, 3508), (1920, 1080), (3000, 2000)]


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
        grain = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
        Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(root / f"{i:04d}.jpg", quality=90)
        (root / f"{i:04d}.txt").write_text(f"1girl, picture {i}")


def naive_loop(dm: FolderDataModule) -> int:
    samples = dm.samples(latents=False)
    for i in range(len(samples)):
        bw, bh = (int(v) for v in samples.bucket_sizes[i])
        image = ImageOps.exif_transpose(Image.open(dm.root / samples.row(i)["path"])).convert("RGB")
        plan = plan_crop(image.width, image.height, bw, bh)
        image = image.resize((plan.resize_width, plan.resize_height), Image.Resampling.LANCZOS)
        image = image.crop((plan.left, plan.top, plan.left + bw, plan.top + bh))
        torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(127.5).sub(1)
    return len(samples)


def through_loader(dm: FolderDataModule, workers: int) -> int:
    """As under a trainer: 8-bit pixels from the workers, made [-1, 1] floats by the transfer hook (here on
    the CPU, in the main process; on a GPU it happens there)."""
    dm.num_workers = workers
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    n = 0
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
        assert batch["pixels"].dtype == torch.float32
        n += len(batch["captions"])
    return n


SCENARIOS = {  # name -> bucket_megapixels
    "paper buckets 0.15-2.25 MP": (0.15, 2.25),
    "1024^2 buckets (one level)": (1.048576, 1.048576),
}


def run(root: Path, bucket_megapixels, rounds: int, workers: int) -> dict[str, list[float]]:
    dm = FolderDataModule.from_config(root=str(root), batch_size=4, num_workers=0, bucket_megapixels=bucket_megapixels)
    dm.check()
    dm.check_pixel_multiple(32)
    dm.setup()
    rates: dict[str, list[float]] = {"naive": [], "ours-0": [], f"ours-{workers}": []}
    cpu_ms: dict[str, list[float]] = {"naive": [], "ours-0": []}  # one process: CPU time is not skewed by load
    for _ in range(rounds):  # alternate, so machine noise hits every variant
        for name in rates:
            start, cpu = time.perf_counter(), time.process_time()
            n = naive_loop(dm) if name == "naive" else through_loader(dm, int(name.split("-")[1]))
            rates[name].append(n / (time.perf_counter() - start))
            if name in cpu_ms:
                cpu_ms[name].append((time.process_time() - cpu) / n * 1000)
    return rates, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root, args.images)
        megabytes = sum(p.stat().st_size for p in root.glob("*.jpg")) / 1e6
        results = {name: run(root, mp, args.rounds, args.workers) for name, mp in SCENARIOS.items()}
    print(f"machine: {machine()}")
    print(f"{args.images} JPEGs, {megabytes:.0f} MB, 0.9-8.7 MP; multiple 32, batch 4; images/s, median of "
          f"{args.rounds} rounds")
    for scenario, (rates, cpu_ms) in results.items():
        base = median(rates["naive"])
        print(f"  {scenario}:")
        for name, values in rates.items():
            cpu = f"  {median(cpu_ms[name]):5.0f} CPU-ms/image" if name in cpu_ms else ""
            print(f"    {name:8s} {median(values):6.1f} images/s  x{median(values) / base:.2f}{cpu}  "
                  f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
