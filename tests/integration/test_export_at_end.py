"""Export at the end of training (the ExportAtEnd callback), switched on from the config."""

from __future__ import annotations

import json

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
