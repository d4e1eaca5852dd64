"""Training on real image folders, cached latents and WebDataset shards with the tiny backbones; exact resume;
bad data stops before any model is built; the commands from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from illustrious.config import instantiate
from illustrious.train import build_module, build_trainer, resume_path, train
from tests.conftest import FAST, run_cli
from tests.unit.test_data_folder import SMALL_OVERRIDES, make_image_folder

# The shapes-specific FAST setting (data.length) does not apply to a folder; FAST's
# enable_progress_bar=false conflicts with the configured TQDMProgressBar callback, so that goes too.
FAST_FOLDER = [o for o in FAST if not o.startswith("data.length")] + ["callbacks.progress=null"]


def folder_config(make_config, root, *overrides, **kw):
    return make_config("data=folder", f"data.root={root}", *SMALL_OVERRIDES, *FAST_FOLDER, *overrides, fast=False, **kw)


@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_trains_on_a_folder_of_real_files(make_config, tmp_path, backbone):
    make_image_folder(tmp_path / "data")
    cfg = folder_config(make_config, tmp_path / "data", f"backbone={backbone}")
    metrics, objects = train(cfg)
    assert metrics["global_step"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "checkpoints" / "last.safetensors").is_file()
    assert list((tmp_path / "samples").glob("*.png"))  # sampled at the most populated bucket's size
    dm = objects["datamodule"]
    assert dm.settings.bucket_multiple == objects["module"].backbone.pixel_multiple


class Recorder(L.Callback):
    """The paths of every batch the trainer ran, and which keys the batches had."""

    def __init__(self):
        self.paths, self.keys, self.epochs = [], set(), []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.paths.append(list(batch["path"]))
        self.epochs.append(trainer.current_epoch)
        self.keys |= set(batch)
        if "pixels" in batch:  # what the module sees: floats in [-1, 1] (the loader hands over 8 bits)
            assert batch["pixels"].dtype == torch.float32
            assert -1 <= batch["pixels"].min() and batch["pixels"].max() <= 1
        if "latents" in batch:  # stored as float16, float32 by the time the module reads them
            assert batch["latents"].dtype == torch.float32


def fit(cfg, recorder: Recorder):
    """train(cfg), with a recorder among the callbacks."""
    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(recorder)
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    datamodule.check()
    backbone = instantiate(cfg.backbone)
    datamodule.check_pixel_multiple(backbone.pixel_multiple)
    trainer.fit(build_module(cfg, backbone), datamodule=datamodule, ckpt_path=resume_path(cfg))
    return trainer


@pytest.mark.slow
def test_a_resumed_run_continues_at_the_exact_batch(make_config, tmp_path):
    make_image_folder(tmp_path / "data", n_good=10)
    # 21 images, batches of 4: epochs of a handful of batches, so 9 steps cross an epoch boundary
    common = ["backbone=lumina_tiny", "data.batch_size=4", "callbacks.samples=null", "callbacks.composition=null",
              "callbacks.checkpoint.every_n_train_steps=4"]
    straight = Recorder()
    fit(folder_config(make_config, tmp_path / "data", *common, "trainer.max_steps=9",
                      output_dir=tmp_path / "straight"), straight)
    first, second = Recorder(), Recorder()
    resumed_dir = tmp_path / "resumed"
    fit(folder_config(make_config, tmp_path / "data", *common, "trainer.max_steps=4", output_dir=resumed_dir), first)
    fit(folder_config(make_config, tmp_path / "data", *common, "trainer.max_steps=9", output_dir=resumed_dir), second)
    assert len(first.paths) == 4 and len(second.paths) == 5
    assert 0 < straight.epochs.count(0) < 9 and straight.epochs[-1] == 1  # the run crosses an epoch boundary
    assert first.epochs + second.epochs == straight.epochs
    assert first.paths + second.paths == straight.paths


def test_trains_from_cached_latents(make_config, tmp_path):
    from illustrious.cache_latents import cache_latents

    make_image_folder(tmp_path / "data", n_good=8)
    data = ["data=folder", f"data.root={tmp_path / 'data'}", *SMALL_OVERRIDES, f"data.latent_cache={tmp_path / 'lat'}"]
    cache_cfg = compose_command("cache_latents", [*data, "backbone=sdxl_tiny", "progress=false", "num_workers=0"])
    summary = cache_latents(cache_cfg)
    assert summary["failed"] == 1 and summary["encoded"] > 0
    recorder = Recorder()
    cfg = folder_config(make_config, tmp_path / "data", "backbone=sdxl_tiny", f"data.latent_cache={tmp_path / 'lat'}")
    fit(cfg, recorder)
    assert "latents" in recorder.keys and "pixels" not in recorder.keys and len(recorder.paths) == 2


def test_trains_from_webdataset_shards(make_config, tmp_path):
    from illustrious.make_shards import make_shards

    make_image_folder(tmp_path / "data", n_good=8)
    index = make_shards(compose_command("make_shards", [f"data.root={tmp_path / 'data'}", *SMALL_OVERRIDES,
                                                        f"out={tmp_path / 'shards'}", "shard_size=4",
                                                        "progress=false"]))
    assert index["total"] > 0
    cfg = make_config("data=webdataset", f"data.urls={tmp_path / 'shards'}", "backbone=lumina_tiny",
                      *SMALL_OVERRIDES, *FAST_FOLDER, fast=False)
    metrics, _ = train(cfg)
    assert metrics["global_step"] == 2


def compose_command(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from illustrious.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_missing_or_empty_data_stops_before_any_model_is_built(make_config, tmp_path, monkeypatch):
    import illustrious.train as train_module
    from illustrious.errors import ConfigError

    built = []
    real = train_module.instantiate
    monkeypatch.setattr(train_module, "instantiate", lambda node, **kw: built.append(node.get("_target_")) or
                        real(node, **kw))
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere does not exist"):
        train(folder_config(make_config, tmp_path / "nowhere"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=r"No readable images .*1 unreadable_image"):
        train(folder_config(make_config, tmp_path / "empty"))
    assert not any("backbone" in str(target).lower() for target in built)  # stopped before the model


@pytest.mark.slow
def test_missing_data_message_on_the_command_line(tmp_path):
    proc = run_cli("data=folder", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    assert proc.returncode != 0 and "does not exist. Point it at your image folder" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_commands_run_from_the_command_line(tmp_path):
    make_image_folder(tmp_path / "data", n_good=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = [f"data.root={tmp_path / 'data'}", *SMALL_OVERRIDES, "progress=false"]
    proc = subprocess.run([sys.executable, "-m", "illustrious.make_shards", *common, f"out={tmp_path / 'shards'}",
                           f"hydra.run.dir={tmp_path / 'log1'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "shards" / "index.json").read_text())["total"] > 0
    proc = subprocess.run([sys.executable, "-m", "illustrious.cache_latents", "backbone=sdxl_tiny", *common,
                           "num_workers=0", f"data.latent_cache={tmp_path / 'lat'}", f"hydra.run.dir={tmp_path / 'log2'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "lat").glob("*/shard-*.safetensors"))
