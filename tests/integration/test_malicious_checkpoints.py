"""Crafted checkpoints never run code: a stored config selects our own config groups, never a target.

Every path that reads a stored run config is tried with files an attacker could share: sampling (the
command and the function), resume. (Export and evaluation use the same `rebuild_run_config`; their own
tests add them here.)
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from illustrious.checkpoint_io import load_checkpoint_file, save_checkpoint_file
from illustrious.errors import ConfigError
from illustrious.weights.run_config import LEGACY_KEY, STORED_KEY, rebuild_run_config
from tests.conftest import FAST, WritesMarker, compose_config

QUIET = ["callbacks.samples=null", "callbacks.progress=null", "callbacks.composition=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from illustrious.train import train

    out = tmp_path_factory.mktemp("run")
    train(compose_config([*FAST, *QUIET, "backbone=sdxl_tiny"], out))
    return out / "checkpoints" / "last.safetensors"


def crafted(trained, tmp_path, marker, *, legacy: bool):
    """A copy of a real checkpoint whose stored backbone names `pathlib.Path.write_text` on `marker`."""
    ckpt = load_checkpoint_file(trained)
    attack = {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "pwned"}
    if legacy:  # the old format: the whole resolved config, targets included
        values = json.loads(json.dumps(ckpt[STORED_KEY]["values"]))
        values["backbone"] = attack
        ckpt = {k: v for k, v in ckpt.items() if k != STORED_KEY} | {LEGACY_KEY: values}
    else:  # the new format with a target smuggled into the values
        ckpt[STORED_KEY]["values"]["backbone"] = {**ckpt[STORED_KEY]["values"]["backbone"], **attack}
    path = tmp_path / ("legacy.safetensors" if legacy else "smuggled.safetensors")
    save_checkpoint_file(ckpt, path)
    return path


def test_stored_config_names_no_target(trained):
    stored = load_checkpoint_file(trained)[STORED_KEY]
    assert "_target_" not in json.dumps(stored)
    assert stored["choices"]["backbone"] == "sdxl_tiny" and stored["choices"]["objective"] == "flow"


def test_legacy_config_with_foreign_target_is_refused(trained, tmp_path):
    marker = tmp_path / "marker"
    path = crafted(trained, tmp_path, marker, legacy=True)
    with pytest.raises(ConfigError, match=r"names pathlib\.Path\.write_text, which none of our 'backbone' options"):
        rebuild_run_config(load_checkpoint_file(path), source=str(path))
    assert not marker.exists()


def test_smuggled_target_is_ignored_and_our_class_is_built(trained, tmp_path):
    from illustrious.sample import load_module

    marker = tmp_path / "marker"
    path = crafted(trained, tmp_path, marker, legacy=False)
    module, run_cfg = load_module(str(path), device="cpu")
    assert not marker.exists()
    assert run_cfg.backbone._target_ == "illustrious.backbones.sdxl.SDXLBackbone.from_config"
    assert type(module.backbone).__name__ == "SDXLBackbone"


@pytest.mark.parametrize("choices, message", [
    ({"backbone": "../../../tmp/evil"}, r"backbone='\.\./\.\./\.\./tmp/evil' is not one of our options"),
    ({"backbone": "sdxl_tiny,hydra.run.dir=/tmp"}, "is not one of our options"),
    ({"hydra/launcher": "local"}, "not one of our config groups"),
])
def test_choices_outside_our_groups_are_refused(trained, choices, message):
    ckpt = load_checkpoint_file(trained)
    ckpt[STORED_KEY]["choices"] = choices
    with pytest.raises(ConfigError, match=message):
        rebuild_run_config(ckpt, source="crafted")


@pytest.mark.parametrize("recipe", ["../../../tmp/evil", "shapes_lumina_tiny_flow"])
def test_a_stored_recipe_choice_is_never_followed(trained, recipe):
    # the recipe group is derived from data/backbone/objective when the config composes; a stored one is skipped
    ckpt = load_checkpoint_file(trained)
    ckpt[STORED_KEY]["choices"]["recipe"] = recipe
    del ckpt[STORED_KEY]["values"]["objective"]["timesteps"]["tail_fraction"]
    cfg = rebuild_run_config(ckpt, source="crafted")
    assert cfg.objective.timesteps.tail_fraction == 0.0  # sdxl_tiny: no recipe of ours applies


def test_interpolations_in_stored_values_are_refused(trained):
    ckpt = load_checkpoint_file(trained)
    ckpt[STORED_KEY]["values"]["sampling"]["negative_prompt"] = "${oc.env:HOME}"
    with pytest.raises(ConfigError, match=r"sampling\.negative_prompt.*interpolation"):
        rebuild_run_config(ckpt, source="crafted")


def test_stored_values_come_back(trained):
    ckpt = load_checkpoint_file(trained)
    ckpt[STORED_KEY]["values"]["sampling"]["steps"] = 13
    cfg = rebuild_run_config(ckpt, source="x")
    assert cfg.sampling.steps == 13 and cfg.data.batch_size == 4 and cfg.trainer.max_steps == 2


def test_sample_command_refuses_crafted_file(trained, tmp_path):
    marker = tmp_path / "marker"
    path = crafted(trained, tmp_path, marker, legacy=True)
    proc = subprocess.run([sys.executable, "-m", "illustrious.sample", f"checkpoint={path}", "prompt=x",
                           f"out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "none of our 'backbone' options" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, suffix):
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": WritesMarker(marker)}))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_checkpoint_file(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint_file(path, allow_pickle=True)  # the opt-in reads with weights_only=True
    assert not marker.exists()


def test_torch_load_target_in_stored_config_is_refused(trained, tmp_path):
    """A stored config naming `torch.load` on embedded pickle bytes is refused before anything loads."""
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(pickle.dumps(WritesMarker(marker)))
    ckpt = load_checkpoint_file(trained)
    values = json.loads(json.dumps(ckpt.pop(STORED_KEY)["values"]))
    values["backbone"] = {"_target_": "torch.load", "f": str(payload), "weights_only": False}
    ckpt[LEGACY_KEY] = values
    path = tmp_path / "torchload.safetensors"
    save_checkpoint_file(ckpt, path)
    from illustrious.sample import load_module

    with pytest.raises(ConfigError, match="torch.load"):
        load_module(str(path), device="cpu")
    assert not marker.exists()


def test_resume_from_crafted_checkpoint_runs_no_code(trained, tmp_path):
    """Resuming reads weights and loop state only; the stored config is never instantiated."""
    from illustrious.train import train

    marker = tmp_path / "marker"
    path = crafted(trained, tmp_path, marker, legacy=True)
    cfg = compose_config([*FAST, *QUIET, "backbone=sdxl_tiny", "trainer.max_steps=3", f"ckpt_path={path}"],
                         tmp_path / "resumed")
    metrics, _ = train(cfg)
    assert not marker.exists()
    assert metrics["global_step"] == 3  # resumed at step 2 and trained one more


def test_legacy_checkpoint_with_renamed_data_module_still_matches():
    from omegaconf import OmegaConf

    from illustrious.weights.run_config import compose_run_config

    values = OmegaConf.to_container(compose_run_config(["backbone=sdxl_tiny", "output_dir=/tmp/x"]), resolve=True)
    values["data"]["_target_"] = "illustrious.data.shapes_datamodule.ShapesDataModule"  # before data/ had rooms
    cfg = rebuild_run_config({LEGACY_KEY: values}, source="legacy")
    assert cfg.data._target_ == "illustrious.data.sources.shapes_datamodule.ShapesDataModule"
    assert cfg.backbone._target_ == "illustrious.backbones.sdxl.SDXLBackbone.from_config"


def test_export_refuses_crafted_file_and_runs_no_code(trained, tmp_path):
    """`python -m illustrious.export` rebuilds the run config the same way: a foreign target is refused, a
    smuggled one ignored, and nothing the file names is ever run."""
    from illustrious.weights.export import export_checkpoint

    marker = tmp_path / "marker"
    legacy = crafted(trained, tmp_path, marker, legacy=True)
    with pytest.raises(ConfigError, match="none of our 'backbone' options"):
        export_checkpoint(legacy, "single_file", tmp_path / "out.safetensors")
    smuggled = crafted(trained, tmp_path, marker, legacy=False)
    with pytest.raises(ConfigError, match="pixel space"):  # our own sdxl_tiny was built, and has no VAE to export
        export_checkpoint(smuggled, "single_file", tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
