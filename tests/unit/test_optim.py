"""Optimizers, per-component learning rates, freezing and gradient checkpointing on the tiny backbones."""

import pytest
import torch

from illustrious.config import instantiate
from illustrious.errors import ConfigError
from illustrious.train import build_module, train

QUIET = ["callbacks.samples=null", "callbacks.composition=null", "callbacks.checkpoint=null"]


def snapshot(module):
    parts = module.backbone.components()
    return {name: [p.detach().clone() for p in part.parameters()] for name, part in parts.items()}


def changed(before, module):
    parts = module.backbone.components()
    return {name: not all(torch.equal(a, b) for a, b in zip(before[name], parts[name].parameters(), strict=True))
            for name in parts}


@pytest.mark.parametrize(("optim", "cls"), [("adafactor", "Adafactor"), ("prodigy", "Prodigy"), ("adamw", "AdamW")])
def test_each_optimizer_trains_every_component(make_config, optim, cls):
    cfg = make_config("backbone=sdxl_tiny", f"optim={optim}", *QUIET)
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building: this is its initial model
    before = snapshot(build_module(cfg))
    _, objects = train(cfg)
    assert type(objects["trainer"].optimizers[0]).__name__ == cls
    assert all(changed(before, objects["module"]).values())


def test_adamw8bit_without_cuda_or_bitsandbytes_says_what_to_do(make_config):
    cfg = make_config("backbone=sdxl_tiny", "optim=adamw8bit", *QUIET)
    module = build_module(cfg)
    if torch.cuda.is_available():
        pytest.skip("runs the CPU refusal only")
    with pytest.raises(ConfigError, match="adamw8bit needs .*CUDA"):
        module.configure_optimizers()


def test_per_encoder_learning_rates_and_freezing(make_config):
    """The paper's v0.1 split (UNet 3.5e-5, text encoder 4.5e-6) with text_encoder_2 frozen: the frozen
    encoder stays bit-identical, the others move."""
    cfg = make_config("backbone=sdxl_tiny", "optim.lr=3.5e-5", "optim.text_encoder_lr=4.5e-6", "optim.lrs={text_encoder_2:0}",
                      "optim.lr_scheduler=null", *QUIET)
    torch.manual_seed(cfg.seed)
    before = snapshot(build_module(cfg))
    _, objects = train(cfg)
    groups = {g["name"]: g["lr"] for g in objects["trainer"].optimizers[0].param_groups}
    assert groups == {"denoiser": 3.5e-5, "text_encoder_1": 4.5e-6}
    assert changed(before, objects["module"]) == {"denoiser": True, "text_encoder_1": True, "text_encoder_2": False}


def test_frozen_denoiser_trains_only_the_text_encoder(make_config):
    cfg = make_config("backbone=lumina_tiny", "optim.lr=0", "optim.text_encoder_lr=1e-3", *QUIET)
    torch.manual_seed(cfg.seed)
    before = snapshot(build_module(cfg))
    _, objects = train(cfg)
    assert changed(before, objects["module"]) == {"denoiser": False, "text_encoder": True}


def test_unknown_learning_rate_group_is_named(make_config):
    with pytest.raises(ConfigError, match=r"text_encoder_3.*text_encoder_1"):
        build_module(make_config("backbone=sdxl_tiny", "optim.lrs={text_encoder_3:1e-5}"))


def gradients(cfg, checkpointing):
    torch.manual_seed(0)
    backbone = instantiate(cfg.backbone)
    backbone.parameter_groups({"denoiser": 1.0, "text_encoders": 1.0})
    backbone.enable_gradient_checkpointing(checkpointing)
    backbone.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, backbone.latent_channels, 16, 16, generator=gen)
    out = backbone(x, torch.tensor([0.3, 0.8]), backbone.encode_text(["a red circle", "a blue square"]))
    (out.float() ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_gradient_checkpointing_gives_the_same_gradients(make_config, backbone):
    cfg = make_config(f"backbone={backbone}")
    plain = gradients(cfg, [])
    checkpointed = gradients(cfg, ["denoiser", "text_encoders"])
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_is_switched_on_per_component(make_config):
    module = build_module(make_config("backbone=sdxl_tiny", "gradient_checkpointing=[denoiser,text_encoder_2]"))
    parts = module.backbone.components()
    assert parts["denoiser"].is_gradient_checkpointing
    assert parts["text_encoder_2"].model.is_activation_checkpointing
    assert not parts["text_encoder_1"].model.is_activation_checkpointing
    with pytest.raises(ConfigError, match="unet"):
        build_module(make_config("backbone=sdxl_tiny", "gradient_checkpointing=[unet]"))
