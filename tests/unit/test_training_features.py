"""Trainer features on the CPU: bf16-mixed, logged metrics, sample grids every N steps, LR schedule."""

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from illustrious.train import train


def test_bf16_mixed_on_cpu(make_config):
    metrics, _ = train(make_config("trainer.precision=bf16-mixed", "backbone=sdxl_tiny"))
    assert math.isfinite(metrics["train/loss"])


def test_tensorboard_has_loss_lr_grad_norm_and_throughput(make_config, tmp_path):
    cfg = make_config("trainer.max_steps=6",
                      "callbacks.throughput={_target_:illustrious.callbacks.throughput.SamplesPerSecond,window_size:2}")
    train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "lr-AdamW/denoiser", "lr-AdamW/text_encoder_1", "lr-AdamW/text_encoder_2"} <= tags
    assert any(tag.endswith("samples_per_sec") for tag in tags), tags
    assert "eval/composition_accuracy" in tags
    assert events.Tags()["images"]  # the sample grid


def test_warmup_then_cosine_decay(make_config):
    _, objects = train(make_config("trainer.max_steps=6", "optim.lr_scheduler.num_warmup_steps=2", "optim.lr=1e-3"))
    scheduler = objects["trainer"].lr_scheduler_configs[0].scheduler
    # diffusers' cosine schedule: after all steps the lr has decayed to 0
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)


def test_sample_grids_every_n_steps(make_config, tmp_path):
    train(make_config("trainer.max_steps=4", "callbacks.samples.every_n_steps=2"))
    names = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert names == ["final_step_000004.png", "step_000002.png"]


def test_gradient_clipping_bounds_the_update(make_config):
    """With SGD at lr 1, one clipped step moves the parameters by exactly the clipped gradient norm."""
    import torch

    from illustrious.config import instantiate

    clip = 1e-3
    cfg = make_config("trainer.max_steps=1", f"trainer.gradient_clip_val={clip}", "optim.lr=1.0",
                      "optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas", "~optim.optimizer.eps",
                      "~optim.optimizer.weight_decay", "optim.lr_scheduler=null", "callbacks.checkpoint=null")
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building, so this is the initial model
    before = [p.detach().clone() for p in instantiate(cfg.backbone).parameters()]
    _, objects = train(cfg)
    after = list(objects["module"].backbone.parameters())
    moved = torch.sqrt(sum(((a.detach() - b) ** 2).sum() for a, b in zip(after, before, strict=True)))
    assert 0 < moved.item() <= clip * 1.001
