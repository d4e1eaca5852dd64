"""Sampling and export rebuild a run from its checkpoint: options from the user's own config folder are valid
when that folder is given on the command line (never when only the checkpoint names it), and files the run
started from (a LoRA to continue) are not needed again: the checkpoint holds those weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import FAST, compose_config, run_cli

QUIET = ["callbacks.samples=null", "callbacks.composition=null", "callbacks.progress=null"]
USER_OPTION = """# a user's own backbone option: the shipped tiny Lumina with a deeper Next-DiT
defaults:
  - lumina_tiny
  - _self_

transformer:
  num_layers: 3
"""


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """Two training steps through the command line with `--config-dir my_conf backbone=my_lumina`."""
    root = tmp_path_factory.mktemp("user_conf")
    conf = root / "my_conf"
    (conf / "backbone").mkdir(parents=True)
    (conf / "backbone" / "my_lumina.yaml").write_text(USER_OPTION)
    out = root / "run"
    proc = run_cli("--config-dir", str(conf), "backbone=my_lumina", *FAST, *QUIET, f"hydra.run.dir={out}", cwd=root,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return conf, out / "checkpoints" / "last.safetensors"


def sample_config(*overrides, out_dir):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from illustrious.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="sample", overrides=[*overrides, f"out_dir={out_dir}"])


def test_sampling_a_run_trained_with_a_user_config_folder(user_run, tmp_path):
    from illustrious.errors import ConfigError
    from illustrious.sample import load_module, sample

    conf, checkpoint = user_run
    module, run_cfg = load_module(str(checkpoint), device="cpu", config_dirs=[str(conf)])
    assert run_cfg.backbone.transformer.num_layers == 3 and len(module.backbone.denoiser.layers) == 3

    # without the folder: a message naming the stored option and the flag, nothing built
    with pytest.raises(ConfigError, match=r"backbone='my_lumina'.*--config-dir DIR or config_dir=DIR"):
        sample(sample_config(f"checkpoint={checkpoint}", "prompt=a red circle", "steps=2", out_dir=tmp_path / "no"))
    assert not (tmp_path / "no").exists() or not any((tmp_path / "no").iterdir())

    # the config_dir key, and the same flag as training on the command line
    paths = sample(sample_config(f"checkpoint={checkpoint}", "prompt=a red circle", "steps=2", f"config_dir={conf}",
                                 out_dir=tmp_path / "key"))
    assert len(paths) == 1 and paths[0].is_file()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", "illustrious.sample", "--config-dir", str(conf),
                           f"checkpoint={checkpoint}", "prompt=a red circle", "steps=2", "device=cpu",
                           f"out_dir={tmp_path / 'flag'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "flag").glob("*.png"))) == 1


def test_a_checkpoint_cannot_name_a_folder(user_run, tmp_path):
    """The folder comes from the command line only: a stored choice that is a path is refused, folder given
    or not, and a folder that does not exist is an error naming it."""
    from illustrious.errors import ConfigError
    from illustrious.weights.run_config import STORED_KEY, rebuild_run_config

    conf, _ = user_run
    for option in ("../my_conf/backbone/my_lumina", str(conf / "backbone" / "my_lumina"), "file://x"):
        crafted = {STORED_KEY: {"format": 1, "choices": {"backbone": option}, "values": {}}}
        with pytest.raises(ConfigError, match="is not one of our options"):
            rebuild_run_config(crafted, source="crafted", config_dirs=[str(conf)])
    with pytest.raises(ConfigError, match="does not exist"):
        rebuild_run_config({STORED_KEY: {"format": 1, "choices": {}, "values": {}}}, source="x",
                           config_dirs=[str(tmp_path / "missing")])


def test_rebuilding_does_not_read_the_lora_file_the_run_continued_from(tmp_path):
    """A run continued from `lora.weights`: sampling its checkpoint after that file moved still works, with the
    checkpoint's adapters."""
    from illustrious.checkpoint_io import load_checkpoint_file
    from illustrious.sample import load_module
    from illustrious.train import build_module, train
    from illustrious.weights.lora import save_lora

    start = tmp_path / "start.safetensors"
    torch.manual_seed(0)
    save_lora(build_module(compose_config(["lora=lora"], tmp_path / "build")).backbone, start, "comfyui")
    out = tmp_path / "run"
    train(compose_config([*FAST, *QUIET, "lora=lora", f"lora.weights={start}", "lora.save=[]"], out))
    start.rename(tmp_path / "moved.safetensors")

    module, run_cfg = load_module(str(out / "checkpoints" / "last.safetensors"), device="cpu")
    assert run_cfg.lora.weights == str(start)  # the run's record is unchanged; the file is just not read
    state = load_checkpoint_file(out / "checkpoints" / "last.safetensors")["state_dict"]
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys and all(torch.equal(module.state_dict()[k], state[k]) for k in lora_keys)


def test_rebuilding_does_not_read_the_sdxl_single_file_the_run_started_from(tmp_path):
    """A run started from `backbone=sdxl backbone.weights=<single file>`: after the file moved, the checkpoint
    still rebuilds (architecture on the meta device, every tensor from the checkpoint) and samples."""
    from illustrious.checkpoint_io import load_checkpoint_file
    from illustrious.sample import load_module
    from illustrious.train import build_module, train
    from illustrious.weights.writing import write_safetensors

    torch.manual_seed(0)
    start = build_module(compose_config(["backbone=sdxl_tiny_vae"], tmp_path / "build")).backbone
    folder, single = tmp_path / "tiny_sdxl", tmp_path / "start.safetensors"
    start.save_pretrained(folder)
    write_safetensors(start.original_state_dict(), single)
    out = tmp_path / "run"
    train(compose_config([*FAST, *QUIET, "backbone=sdxl", f"backbone.weights={single}", f"backbone.config={folder}",
                          "objective=eps"], out))
    single.rename(tmp_path / "moved.safetensors")

    checkpoint = out / "checkpoints" / "last.safetensors"
    module, _ = load_module(str(checkpoint), device="cpu")
    state = load_checkpoint_file(checkpoint)["state_dict"]
    loaded = module.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(p.is_meta for p in module.parameters())
    with torch.no_grad():
        cond = module.backbone.encode_text(["a red circle"])
        x = torch.randn(1, module.backbone.latent_channels, 8, 8)
        assert torch.isfinite(module.backbone(x, torch.tensor([0.5]), cond)).all()
