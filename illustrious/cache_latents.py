"""`python -m illustrious.cache_latents backbone=sdxl data=folder data.root=/data/anime data.latent_cache=/data/latents`

Encodes every training image of a folder with the backbone's autoencoder, once, into safetensors shards
under `<data.latent_cache>/<key>/` (see illustrious/data/storage/latent_cache.py); training with the same
backbone and data settings plus `data.latent_cache=...` then reads latents instead of decoding and
encoding images. Safe to interrupt: run it again and it encodes only what is missing. Images that fail
to decode are skipped, counted and listed in `failed.json`.
"""

from __future__ import annotations

import logging
import time

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from illustrious.config import CONF_DIR, instantiate
from illustrious.data.images.decode import ImageError
from illustrious.data.loading.batching import unit_pixels
from illustrious.data.sources.folder_dataset import FolderSamples
from illustrious.data.storage.latent_cache import LatentCache, LatentCacheWriter, cache_description, cache_key
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class EncodeItems:
    """Dataset over lists of indices (one bucket each): pixels of those that load, errors of those that don't."""

    def __init__(self, samples: FolderSamples):
        self.samples = samples

    def __getitem__(self, indices) -> list[tuple[int, dict | None, str | None]]:
        out = []
        for i in indices:
            try:
                out.append((int(i), self.samples.load(int(i)), None))
            except (ImageError, OSError) as e:
                out.append((int(i), None, str(e)))
        return out


def as_list(items):  # the DataLoader's collate: batches stay lists (a module-level function pickles to workers)
    return items


def plan_batches(bucket_ids: np.ndarray, todo: list[int], batch_size: int) -> list[list[int]]:
    """`todo` in batches of one bucket each (the last batch of a bucket may be short: no padding here)."""
    by_bucket: dict[int, list[int]] = {}
    for i in todo:
        by_bucket.setdefault(int(bucket_ids[i]), []).append(i)
    return [members[k:k + batch_size] for _, members in sorted(by_bucket.items())
            for k in range(0, len(members), batch_size)]


def fill_cache(datamodule, backbone, *, device: str = "cpu", batch_size: int = 16, shard_size: int = 1024,
               dtype: str = "float16", num_workers: int = 0, progress: bool = True) -> dict:
    """Encode what the cache lacks; returns counts (encoded, already cached, failed) and the cache folder."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}.")
    autoencoder = backbone.autoencoder
    key = cache_key(autoencoder, datamodule.settings)
    folder = datamodule.latent_cache / key
    existing = LatentCache(folder) if (folder / "meta.json").is_file() else None
    samples = datamodule.samples(latents=False)
    paths = samples.table.column("path").to_pylist()
    stamps = [samples.file_stamp(i) for i in range(len(samples))]
    done = [i for i in range(len(samples)) if existing and (existing.has(paths[i], stamps[i])
                                                            or existing.failed_for(paths[i], stamps[i]))]
    todo = sorted(set(range(len(samples))) - set(done))
    log.info("Latent cache %s: %d images cached, %d to encode.", folder, len(done), len(todo))
    writer = LatentCacheWriter(folder, {**cache_description(autoencoder, datamodule.settings), "key": key,
                                        "dtype": dtype}, shard_size)
    loader = DataLoader(EncodeItems(samples), sampler=plan_batches(datamodule.bucket_ids, todo, batch_size),
                        batch_size=None, collate_fn=as_list, num_workers=num_workers)
    autoencoder.to(device).eval()
    failed = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="Encoding latents", unit="img")
    start = time.perf_counter()
    try:
        for items in loader:
            good = [(i, s) for i, s, _ in items if s is not None]
            for i, _, error in items:
                if error is not None:
                    reason, _, detail = error.partition(": ")
                    writer.fail(paths[i], stamps[i], reason, detail)
                    log.warning("Skipped %s (%s)", paths[i], error)
                    failed += 1
            if good:
                pixels = unit_pixels(torch.stack([torch.from_numpy(s["pixels"]) for _, s in good]).to(device))
                with torch.no_grad():
                    latents = autoencoder.encode(pixels).to(DTYPES[dtype])
                for (i, s), latent in zip(good, latents, strict=True):
                    writer.add(paths[i], stamps[i], latent, (s["original_size"], s["crop_top_left"], s["target_size"]))
            if bar:
                bar.update(len(items))
    finally:  # an interrupted run keeps what it encoded
        writer.flush()
        if bar:
            bar.close()
    seconds = time.perf_counter() - start
    log.info("Encoded %d images in %.1fs (%d failed to decode, listed in %s).", writer.written, seconds, failed,
             folder / "failed.json")
    return {"folder": str(folder), "key": key, "encoded": writer.written, "cached_before": len(done),
            "failed": failed, "seconds": seconds}


def cache_latents(cfg: DictConfig) -> dict:
    """The command as a plain function: build the data module and backbone from `cfg`, fill the cache."""
    datamodule = instantiate(cfg.data)
    if getattr(datamodule, "latent_cache", None) is None:
        raise ConfigError("Set data.latent_cache=/path/to/latents (a folder; it is created) for the cache to go to.")
    datamodule.latent_cache.mkdir(parents=True, exist_ok=True)
    datamodule.check()
    backbone = instantiate(cfg.backbone)
    datamodule.check_pixel_multiple(backbone.pixel_multiple)
    datamodule.assign_buckets()
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return fill_cache(datamodule, backbone, device=device, batch_size=cfg.batch_size, shard_size=cfg.shard_size,
                      dtype=cfg.dtype, num_workers=cfg.num_workers, progress=cfg.progress)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="cache_latents")
def main(cfg: DictConfig) -> None:
    cache_latents(cfg)


if __name__ == "__main__":
    main()
