"""Sharded strategies on CUDA: FSDP (FULL_SHARD, SHARD_GRAD_OP), FSDP2 and DeepSpeed ZeRO train the tiny
backbones in bf16. Skipped without CUDA (and the DeepSpeed ones without DeepSpeed)."""

import importlib.util
import math

import pytest
import torch

from illustrious.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

NO_SAMPLING = ["callbacks.samples=null", "callbacks.composition=null", "trainer.devices=1", "trainer.max_steps=3"]


@pytest.mark.parametrize("strategy", [
    ["trainer=fsdp"],
    ["trainer=fsdp", "trainer.strategy.sharding_strategy=SHARD_GRAD_OP"],
    ["trainer=fsdp2", "optim.optimizer.fused=false"],
    pytest.param(["trainer=deepspeed_zero2"], marks=pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None, reason="needs DeepSpeed")),
    pytest.param(["trainer=deepspeed_zero3"], marks=pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None, reason="needs DeepSpeed")),
])
@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_sharded_strategy_trains_bf16(backbone, strategy, make_config):
    metrics, _ = train(make_config(f"backbone={backbone}", *strategy, *NO_SAMPLING))
    assert metrics["global_step"] == 3 and math.isfinite(metrics["train/loss"])
