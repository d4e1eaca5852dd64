"""Export at the end of training (the ExportAtEnd callback), switched on from the config."""

from __future__ import annotations

import json

import pytest
import torch

from illustrious.weights.safe_read import read_keys, read_metadata
from tests.conftest import FAST, compose_config

QUIET = ["callbacks.samples=null", "callbacks.progress=null", "callbacks.composition=null"]


def test_training_ends_with_an_export(tmp_path):
    from illustrious.train import train

    out = tmp_path / "exports"
    callback = ("+callbacks.export={_target_: illustrious.weights.export_callback.ExportAtEnd, "
                f"formats: [single_file], out_dir: '{out}', dtype: fp32}}")
    _, objects = train(compose_config([*FAST, *QUIET, "backbone=sdxl_tiny_vae", "objective=vpred", callback],
                                      tmp_path / "run"))
    single = out / "single_file.safetensors"
    assert {"v_pred", "ztsnr"} <= set(read_keys(single))
    meta = read_metadata(single)
    assert json.loads(meta["illustrious.provenance"])["global_step"] == 2
    assert json.loads(meta["illustrious.run"])["choices"]["backbone"] == "sdxl_tiny_vae"
    from safetensors.torch import load_file

    unet = objects["module"].backbone.denoiser.state_dict()
    written = load_file(single)
    assert torch.equal(written["model.diffusion_model.out.2.weight"], unet["conv_out.weight"])


@pytest.mark.parametrize("backbone,objective,message", [
    ("lumina_tiny", "flow", "pixel space"),  # no VAE: the formats' readers could not decode it
    ("lumina_tiny_vae", "flow_x0", "objective=flow_x0.*velocity"),  # no format marks x0-prediction
])
def test_an_export_that_cannot_be_written_is_refused_before_training(tmp_path, backbone, objective, message):
    from illustrious.errors import ConfigError
    from illustrious.train import train

    callback = ("+callbacks.export={_target_: illustrious.weights.export_callback.ExportAtEnd, "
                f"formats: [comfyui], out_dir: '{tmp_path / 'exports'}', dtype: fp32}}")
    with pytest.raises(ConfigError, match=message):
        train(compose_config([*FAST, *QUIET, f"backbone={backbone}", f"objective={objective}", callback],
                             tmp_path / "run"))
    assert not (tmp_path / "run" / "steps.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()
