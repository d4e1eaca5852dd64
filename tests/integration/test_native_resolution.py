"""Resolution belongs to the backbone (issue 7, item 3): image-data buckets follow the backbone's native
resolution, and a largest bucket that will not fit in memory stops the run before the first step."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from illustrious import memory_estimate as mem
from illustrious.callbacks.memory_check import MemoryCheck
from illustrious.config import instantiate
from illustrious.data.images.settings import ImageSettings
from illustrious.errors import ConfigError
from illustrious.train import build_module, train
from tests.conftest import FAST

FAST_FOLDER = [o for o in FAST if not o.startswith("data.length")] + ["callbacks.progress=null"]


def large_image_folder(root, n: int = 8, side: int = 1024):
    """A folder of `side`-px illustrations with captions, as a newcomer points a tiny backbone at."""
    root.mkdir(parents=True)
    for i in range(n):
        image = Image.new("RGB", (side, side), (40 * i % 255, 90, 160))
        image.paste((250, 200, 30), (side // 4, side // 4, side // 2, side // 2))
        image.save(root / f"{i:03d}.jpg", quality=80)
        (root / f"{i:03d}.txt").write_text(f"1girl, picture {i}")
    return root


def image_settings(cfg) -> ImageSettings:
    settings, _ = ImageSettings.split(OmegaConf.to_container(cfg.data, resolve=True))
    return settings


@pytest.mark.parametrize("backbone, native", [("sdxl_tiny", 32), ("lumina_tiny", 32), ("sdxl", 1024), ("lumina", 1024)])
def test_buckets_follow_the_backbones_native_resolution(make_config, backbone, native):
    for source in ("folder", "webdataset"):
        settings = image_settings(make_config(f"backbone={backbone}", f"data={source}", fast=False))
        area = native * native
        assert settings.native_resolution == native
        assert settings.bucket_area_range == (int(0.15 * area), int(2.25 * area))  # Illustrious v2.0's range
        assert settings.min_side == round(0.75 * native) and settings.bucket_step == native // 8


def test_absolute_settings_still_win(make_config):
    settings = image_settings(make_config("backbone=sdxl_tiny", "data=folder", "data.bucket_megapixels=[0.15,2.25]",
                                          "data.min_side=768", "data.bucket_step=128", fast=False))
    assert settings.bucket_area_range == (150_000, 2_250_000)
    assert (settings.min_side, settings.bucket_step) == (768, 128)


@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_declared_native_resolution_matches_the_architecture(make_config, backbone):
    cfg = make_config(f"backbone={backbone}")
    model = instantiate(cfg.backbone)
    derived = model.denoiser.config.sample_size * model.autoencoder.spatial_factor  # diffusers' sample_size convention
    assert model.native_resolution == cfg.backbone.native_resolution == derived


def test_tiny_backbone_on_large_images_trains_on_small_buckets(make_config, tmp_path):
    root = large_image_folder(tmp_path / "data")
    cfg = make_config("backbone=sdxl_tiny", "data=folder", f"data.root={root}", "data.num_workers=0",
                      *FAST_FOLDER, fast=False)
    metrics, objects = train(cfg)
    assert metrics["global_step"] == 2
    dm = objects["datamodule"]
    assert dm.largest_image_size() == (48, 48)  # 2.25 x 32^2: 1024-px images land in the top level
    assert objects["trainer"].callbacks  # the memory check ran and found it fits
    check = next(c for c in objects["trainer"].callbacks if isinstance(c, MemoryCheck))
    assert check.estimate["bucket"] == (48, 48) and check.estimate["need"] < check.estimate["free"]


def test_a_bucket_that_will_not_fit_stops_before_the_first_step(make_config, tmp_path, monkeypatch):
    root = large_image_folder(tmp_path / "data")
    # the old absolute default on a pixel-space tiny model: 1024^2 buckets (what grew past 23 GB)
    cfg = make_config("backbone=sdxl_tiny", "data=folder", f"data.root={root}", "data.num_workers=0",
                      "data.bucket_megapixels=[0.15,2.25]", "data.min_side=768", "data.bucket_step=128",
                      *FAST_FOLDER, fast=False)
    monkeypatch.setattr(mem, "free_bytes", lambda device, sharing=1: 4 * 2**30)
    steps = []
    monkeypatch.setattr("illustrious.module.DiffusionModule.training_step",
                        lambda self, batch, i: steps.append(i))
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert "largest bucket, 1024x1024" in message and "4.0 GB is free" in message
    for setting in ("data.batch_size", "data.bucket_area", "data.bucket_megapixels", "gradient_checkpointing"):
        assert setting in message
    assert steps == []  # stopped before any training step


def test_activation_estimate_extrapolates_to_the_measured_value(make_config):
    """The two-point fit from 1/16 and 1/4 of the area predicts the saved activations at the full size."""
    module = build_module(make_config("backbone=sdxl_tiny"))
    multiple = module.backbone.pixel_multiple
    side = 384
    with torch.no_grad():  # (saved_bytes enables grad itself)
        predicted = mem.activation_bytes(module, side, side, 2, [""], multiple)
        measured = mem.saved_bytes(module, side, side, ["", ""])
    assert side * side > mem.DIRECT_PIXELS  # the extrapolating path
    assert predicted == pytest.approx(measured, rel=0.1)


def test_fit_goes_through_both_points():
    model = mem.fit_activation_model([(100, 1000.0 + 5 * 100**2), (400, 4000.0 + 5 * 400**2)])
    assert model.linear == pytest.approx(10.0) and model.quadratic == pytest.approx(5.0)
    assert model.bytes_per_sample(900) == pytest.approx(10 * 900 + 5 * 900**2)
