"""The latent cache: keyed by autoencoder and preprocessing, resumable, read back exactly, stale caches caught."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from illustrious.backbones.pixel_autoencoder import PixelAutoencoder
from illustrious.cache_latents import fill_cache
from illustrious.data.images.settings import ImageSettings
from illustrious.data.loading.batching import unit_pixels
from illustrious.data.sources.folder_datamodule import FolderDataModule
from illustrious.data.storage import latent_cache as cache_module
from illustrious.data.storage.latent_cache import LatentCache, cache_key, open_latent_cache
from illustrious.errors import ConfigError
from tests.unit.test_data_folder import SMALL, make_image_folder


def datamodule(root, cache, **kw) -> FolderDataModule:
    dm = FolderDataModule.from_config(root=str(root), **SMALL, latent_cache=str(cache), batch_size=4, num_workers=0, **kw)
    cache.mkdir(exist_ok=True)
    dm.check()
    dm.check_pixel_multiple(4)
    dm.assign_buckets()
    return dm


def tiny_vae():
    from diffusers import AutoencoderKL

    from illustrious.backbones.autoencoders import LatentAutoencoder

    torch.manual_seed(0)
    return LatentAutoencoder(AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                           norm_num_groups=4, latent_channels=4, sample_size=32), sample=False)


def test_key_follows_the_autoencoder_and_the_preprocessing():
    settings = ImageSettings(bucket_multiple=16)
    vae = tiny_vae()
    key = cache_key(vae, settings)
    assert key == cache_key(tiny_vae(), settings)  # same weights, same key
    with torch.no_grad():
        next(vae.parameters()).add_(1e-3)
    assert cache_key(vae, settings) != key  # a finetuned VAE is another cache
    assert cache_key(tiny_vae(), ImageSettings(bucket_multiple=32)) != key
    assert cache_key(tiny_vae(), ImageSettings(bucket_multiple=16, max_megapixels=2.0)) != key
    assert cache_key(PixelAutoencoder(2), settings) != cache_key(PixelAutoencoder(4), settings)


def test_cache_holds_what_the_autoencoder_makes_and_lists_failures(tmp_path):
    make_image_folder(tmp_path / "data", n_good=8)
    dm = datamodule(tmp_path / "data", tmp_path / "latents")
    ae = PixelAutoencoder(2)
    summary = fill_cache(dm, SimpleNamespace(autoencoder=ae), batch_size=3, shard_size=5, dtype="float32",
                         progress=False)
    assert summary["failed"] == 1 and summary["encoded"] == len(dm.selection) - 1
    cache = LatentCache(tmp_path / "latents" / summary["key"])
    assert list(cache.failed) == ["broken/truncated.jpg"]
    samples = dm.samples(latents=False)
    for i in range(len(samples)):
        path = samples.row(i)["path"]
        if path == "broken/truncated.jpg":
            continue
        sample = samples.load(i)
        latent, (original, crop, target) = cache.get(path)
        assert sample["pixels"].dtype == np.uint8
        torch.testing.assert_close(latent, ae.encode(unit_pixels(torch.from_numpy(sample["pixels"])[None]))[0])
        assert latent.dtype == torch.float32  # as stored (dtype="float32")
        assert (original, crop, target) == (sample["original_size"], sample["crop_top_left"], sample["target_size"])


def test_an_interrupted_cache_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", n_good=8)
    dm = datamodule(tmp_path / "data", tmp_path / "latents")
    backbone = SimpleNamespace(autoencoder=PixelAutoencoder(2))
    real_flush, calls = cache_module.LatentCacheWriter.flush, []

    def flush_then_crash(self):
        real_flush(self)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C after the second shard

    monkeypatch.setattr(cache_module.LatentCacheWriter, "flush", flush_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fill_cache(dm, backbone, batch_size=2, shard_size=4, progress=False)
    monkeypatch.setattr(cache_module.LatentCacheWriter, "flush", real_flush)
    key = cache_key(backbone.autoencoder, dm.settings)
    partial = LatentCache(tmp_path / "latents" / key)
    kept = len(partial)
    assert 0 < kept < len(dm.selection) - 1
    summary = fill_cache(dm, backbone, batch_size=2, shard_size=4, progress=False)
    assert summary["cached_before"] == kept + len(partial.failed)  # a known failure is not retried
    assert summary["encoded"] == len(dm.selection) - 1 - kept
    assert len(LatentCache(tmp_path / "latents" / key)) == len(dm.selection) - 1
    again = fill_cache(dm, backbone, batch_size=2, shard_size=4, progress=False)
    assert again["encoded"] == 0


def test_training_reads_latents_and_leaves_out_failures(tmp_path):
    make_image_folder(tmp_path / "data", n_good=8)
    dm = datamodule(tmp_path / "data", tmp_path / "latents")
    ae = PixelAutoencoder(2)
    fill_cache(dm, SimpleNamespace(autoencoder=ae), batch_size=4, progress=False)
    train = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, latent_cache=str(tmp_path / "latents"),
                             batch_size=4, num_workers=0)
    train.check()
    train.check_pixel_multiple(4)
    train.trainer = SimpleNamespace(lightning_module=SimpleNamespace(backbone=SimpleNamespace(
        autoencoder=ae, pixel_multiple=4)), global_rank=0, world_size=1)
    train.setup("fit")
    assert len(train.selection) == len(dm.selection) - 1
    assert train.selection.dropped.paths("decode_failed") == ["broken/truncated.jpg"]
    batch = next(iter(train.train_dataloader()))
    assert "latents" in batch and "pixels" not in batch
    assert batch["latents"].dtype == torch.float16  # stored half precision, made float32 on the device:
    batch = train.on_after_batch_transfer(batch, 0)
    assert batch["latents"].dtype == torch.float32 and batch["latents"].shape[1] == 12
    h, w = batch["target_size"][0].tolist()
    assert batch["latents"].shape[-2:] == (h // 2, w // 2)


def test_a_cache_for_another_autoencoder_is_stale(tmp_path):
    make_image_folder(tmp_path / "data", n_good=4)
    dm = datamodule(tmp_path / "data", tmp_path / "latents")
    ae = PixelAutoencoder(2)
    fill_cache(dm, SimpleNamespace(autoencoder=ae), progress=False)
    with pytest.raises(ConfigError, match=r"stale for this run"):
        open_latent_cache(tmp_path / "latents", PixelAutoencoder(4), dm.settings)
    # the matching autoencoder opens the cache made for it: every readable image, encoded by it (float16)
    cache = open_latent_cache(tmp_path / "latents", PixelAutoencoder(2), dm.settings)
    assert cache.folder == tmp_path / "latents" / cache_key(ae, dm.settings)
    samples = dm.samples(latents=False)
    paths = [samples.row(i)["path"] for i in range(len(samples))]
    assert list(cache.failed) == ["broken/truncated.jpg"]
    assert sorted(cache.index) == sorted(p for p in paths if p != "broken/truncated.jpg")
    for i, path in enumerate(paths):
        if path in cache.failed:
            continue
        sample = samples.load(i)
        latent, sizes = cache.get(path)
        expected = ae.encode(unit_pixels(torch.from_numpy(sample["pixels"])[None]))[0].to(torch.float16)
        assert latent.dtype == torch.float16 and torch.equal(latent, expected)
        assert sizes == (sample["original_size"], sample["crop_top_left"], sample["target_size"])


def test_new_images_must_be_cached_before_training(tmp_path):
    make_image_folder(tmp_path / "data", n_good=4)
    dm = datamodule(tmp_path / "data", tmp_path / "latents")
    ae = PixelAutoencoder(2)
    fill_cache(dm, SimpleNamespace(autoencoder=ae), progress=False)
    from tests.unit.test_data_folder import encoded, picture

    (tmp_path / "data" / "new.png").write_bytes(encoded(picture(64, 64), "PNG"))
    (tmp_path / "data" / "new.txt").write_text("added after caching")
    train = FolderDataModule.from_config(root=str(tmp_path / "data"), **SMALL, latent_cache=str(tmp_path / "latents"),
                             num_workers=0)
    train.check()
    train.check_pixel_multiple(4)
    train.trainer = SimpleNamespace(lightning_module=SimpleNamespace(backbone=SimpleNamespace(
        autoencoder=ae, pixel_multiple=4)), global_rank=0, world_size=1)
    with pytest.raises(ConfigError, match=r"1 of .* not in the latent cache .*new.png"):
        train.setup("fit")


def test_random_crop_and_a_cache_do_not_mix(tmp_path):
    with pytest.raises(ConfigError, match="data.crop=random"):
        FolderDataModule.from_config(root=str(tmp_path), latent_cache=str(tmp_path), crop="random")
