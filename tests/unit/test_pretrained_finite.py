"""Pretrained weights holding NaN/Inf are refused when loaded, naming the file (or subfolder) and the tensor:
single files (through `build_loaded`) and diffusers folders alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from illustrious.backbones.pretrained import build_loaded
from illustrious.checkpoint_io import NonFiniteError


def test_a_single_file_state_dict_with_nan_is_refused_naming_file_and_tensor():
    good = {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}
    assert isinstance(build_loaded(lambda: nn.Linear(2, 2), good, "layer in /w/model.safetensors"), nn.Linear)
    bad = {**good, "bias": torch.tensor([0.0, float("inf")])}
    with pytest.raises(NonFiniteError, match=r"/w/model\.safetensors: tensor bias holds NaN or Inf"):
        build_loaded(lambda: nn.Linear(2, 2), bad, "layer in /w/model.safetensors")


def test_a_diffusers_folder_with_nan_weights_is_refused_naming_the_subfolder(make_config, tmp_path):
    from diffusers import AutoencoderKL

    from illustrious.backbones.autoencoders import LatentAutoencoder
    from illustrious.backbones.sdxl.model import SDXLBackbone
    from illustrious.config import instantiate

    bb = instantiate(make_config("backbone=sdxl_tiny").backbone)
    bb.autoencoder = LatentAutoencoder(AutoencoderKL(block_out_channels=(8, 8), latent_channels=bb.latent_channels,
                                                     down_block_types=("DownEncoderBlock2D",) * 2,
                                                     up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4),
                                       sample=False)
    name, param = next(iter(bb.denoiser.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    bb.save_pretrained(tmp_path / "model")
    with pytest.raises(NonFiniteError, match=rf"model/unet: tensor {name} holds NaN or Inf"):
        SDXLBackbone.from_pretrained(str(tmp_path / "model"))
