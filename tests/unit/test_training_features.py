"""Trainer features on the CPU: bf16-mixed, logged metrics, sample grids every N steps, LR schedule."""

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from illustrious.train import train


def first_tensor(output):
    """A diffusers model's output: a tensor, a tuple starting with one, or an output object with `.sample`."""
    return output if torch.is_tensor(output) else output[0] if isinstance(output, tuple) else output.sample


class DtypeProbe(L.Callback):
    """Records, on the first training batch, the parameters' dtypes and the denoiser's output dtype."""

    def on_train_start(self, trainer, module):
        self.output_dtypes = []
        self.handle = module.backbone.denoiser.register_forward_hook(
            lambda mod, args, output: self.output_dtypes.append(first_tensor(output).dtype))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.param_dtypes = {p.dtype for p in module.parameters()}
        self.handle.remove()


def first_step(make_config, monkeypatch, precision, output_dir):
    """One training step at `precision` from the same seed, batch, noise and times; returns (loss, probe)."""
    import illustrious.train as train_module

    build_trainer, probe = train_module.build_trainer, DtypeProbe()

    def with_probe(cfg):
        trainer = build_trainer(cfg)
        trainer.callbacks.append(probe)
        return trainer

    cfg = make_config(f"trainer.precision={precision}", "backbone=sdxl_tiny", "trainer.max_steps=1",
                      "callbacks.samples=null", "callbacks.composition=null", "callbacks.checkpoint=null",
                      output_dir=output_dir / precision)
    with monkeypatch.context() as patch:  # this run's probe only
        patch.setattr(train_module, "build_trainer", with_probe)
        metrics, _ = train_module.train(cfg)
    return metrics["train/loss"], probe


# bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4 % per operation), but the loss is taken in fp32
# against an fp32 target and is dominated by the noise: the first-step loss of the tiny UNet differed from the
# fp32 run's by 4.1e-5 relative (2-core Xeon). The stated tolerance is 0.1 %, 25 times that.
BF16_LOSS_RTOL = 1e-3


def test_bf16_mixed_on_cpu_keeps_fp32_weights_and_matches_fp32_loss(make_config, monkeypatch, tmp_path):
    loss32, probe32 = first_step(make_config, monkeypatch, "32-true", tmp_path)
    loss16, probe16 = first_step(make_config, monkeypatch, "bf16-mixed", tmp_path)
    assert probe32.output_dtypes[0] == torch.float32
    assert probe16.output_dtypes[0] == torch.bfloat16  # the forward ran under bf16 autocast
    assert probe16.param_dtypes == probe32.param_dtypes == {torch.float32}  # the weights stayed fp32
    print(f"first-step loss fp32 {loss32:.6f}, bf16-mixed {loss16:.6f}, relative difference "
          f"{abs(loss16 - loss32) / loss32:.2e}")
    assert loss16 != loss32  # bf16 really rounded something
    assert loss16 == pytest.approx(loss32, rel=BF16_LOSS_RTOL)


def test_tensorboard_has_loss_lr_grad_norm_and_throughput(make_config, tmp_path):
    cfg = make_config("backbone=sdxl_tiny", "trainer.max_steps=6",
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
