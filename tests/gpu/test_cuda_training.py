"""GPU checks: every pair trains in bf16-mixed on CUDA and samples there. Skipped without CUDA."""

import math

import pytest
import torch

from illustrious.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("objective", ["eps", "vpred", "flow"])
@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_pair_trains_bf16_on_cuda(backbone, objective, make_config):
    cfg = make_config(f"backbone={backbone}", f"objective={objective}", "trainer.accelerator=gpu", "trainer.devices=1",
                      "trainer.precision=bf16-mixed", "trainer.max_steps=3")
    metrics, objects = train(cfg)
    assert metrics["global_step"] == 3 and math.isfinite(metrics["train/loss"])
    assert next(objects["module"].parameters()).is_cuda


def test_sampling_is_reproducible_on_cuda(make_config):
    from illustrious.config import instantiate
    from illustrious.train import build_module

    cfg = make_config("backbone=sdxl_tiny")
    torch.manual_seed(0)
    module = build_module(cfg, instantiate(cfg.backbone)).cuda()
    a = module.generate(["a red circle on the left"], height=32, width=32, steps=4, seed=7)
    b = module.generate(["a red circle on the left"], height=32, width=32, steps=4, seed=7)
    torch.testing.assert_close(a, b)
