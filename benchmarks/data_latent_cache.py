"""Latent-cache read throughput: SDXL-sized latents (4 x 128 x 128, float16) through the training loader.

A folder of 1024x1024 images (flat PNGs: only their headers matter here, since training from the cache
never opens an image) is scanned; a cache of random latents is written for it with `LatentCacheWriter`
in shards of 256; then rounds time the `data=folder data.latent_cache=...` DataLoader (bucket batches
of 8, float32 latents out) with 0 and N workers, against decoding and resizing the images themselves
(the same loader without the cache, which still has the VAE encode ahead of it).

    uv run python benchmarks/data_latent_cache.py [--images 1024] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from benchmarks.common import machine, median
from illustrious.backbones.pixel_autoencoder import PixelAutoencoder
from illustrious.data.sources.folder_datamodule import FolderDataModule
from illustrious.data.storage.latent_cache import LatentCacheWriter, cache_description, cache_key


def folder_with_cache(root: Path, n: int, autoencoder) -> None:
    images = root / "images"
    images.mkdir()
    flat = Image.new("RGB", (1024, 1024), (200, 180, 160))
    for i in range(n):
        flat.save(images / f"{i:05d}.png", compress_level=1)
        (images / f"{i:05d}.txt").write_text(f"1girl, picture {i}")
    dm = datamodule(root, autoencoder, cache=False)
    samples = dm.samples(latents=False)
    key = cache_key(autoencoder, dm.settings)
    writer = LatentCacheWriter(root / "latents" / key, {**cache_description(autoencoder, dm.settings), "key": key},
                               shard_size=256)
    generator = torch.Generator().manual_seed(0)
    for i in range(len(samples)):
        row = samples.row(i)
        writer.add(row["path"], samples.file_stamp(i), torch.randn(4, 128, 128, generator=generator).half(),
                   ((1024, 1024), (0, 0), (1024, 1024)))
    writer.flush()


def datamodule(root: Path, autoencoder, cache: bool, workers: int = 0) -> FolderDataModule:
    dm = FolderDataModule(root=str(root / "images"), batch_size=8, num_workers=workers,
                          latent_cache=str(root / "latents") if cache else None)
    (root / "latents").mkdir(exist_ok=True)
    dm.check()
    dm.check_pixel_multiple(32)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(backbone=SimpleNamespace(
        autoencoder=autoencoder, pixel_multiple=32)), global_rank=0, world_size=1)
    dm.setup("fit")
    return dm


def rate(dm: FolderDataModule, key: str) -> float:
    start, n = time.perf_counter(), 0
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        assert batch[key].dtype == torch.float32
        n += batch[key].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    autoencoder = PixelAutoencoder(8)  # stands in for the VAE's identity in the cache key
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder_with_cache(root, args.images, autoencoder)
        size_mb = sum(p.stat().st_size for p in (root / "latents").rglob("*.safetensors")) / 1e6
        loaders = {"cache, 0 workers": datamodule(root, autoencoder, True, 0),
                   f"cache, {args.workers} workers": datamodule(root, autoencoder, True, args.workers),
                   "images, 0 workers": datamodule(root, autoencoder, False, 0)}
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name, dm in loaders.items():
                rates[name].append(rate(dm, "latents" if name.startswith("cache") else "pixels"))
    print(f"machine: {machine()}")
    print(f"{args.images} latents of 4x128x128 float16 ({size_mb:.0f} MB in shards of 256), batches of 8; "
          f"median of {args.rounds} rounds")
    for name, values in rates.items():
        print(f"  {name:18s} {median(values):8.1f} samples/s  (rounds: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
