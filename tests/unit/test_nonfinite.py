"""NaN/Inf losses and gradients in real (tiny) training runs: skipped and counted, or a stop that names the step
and batch; NaN weights never reach a checkpoint."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from illustrious.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from illustrious.checkpoint_folder import CheckpointFolder
from illustrious.checkpoint_io import NonFiniteError, load_checkpoint_file
from illustrious.config import instantiate
from illustrious.errors import ConfigError
from illustrious.train import build_module, build_trainer

QUIET = ["callbacks.samples=null", "callbacks.composition=null", "callbacks.checkpoint.every_n_train_steps=1",
         "trainer.max_steps=4", "data.length=32"]


class PoisonBatch(L.Callback):
    """Turns the pixels of the batches at the given global steps into NaN (a corrupt image, say)."""

    def __init__(self, steps):
        self.steps = set(steps)
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.weights[trainer.global_step] = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
        if trainer.global_step in self.steps:
            batch["pixels"].fill_(float("nan"))


def fit(cfg, *extra_callbacks):
    L.seed_everything(cfg.seed)
    trainer = build_trainer(cfg)
    trainer.callbacks.extend(extra_callbacks)
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    module = build_module(cfg)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


def test_skip_policy_drops_the_step_and_counts_it(make_config, tmp_path):
    poison = PoisonBatch({1})
    trainer, module = fit(make_config(*QUIET, "callbacks.nonfinite.policy=skip"), poison)
    assert trainer.global_step == 4
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    assert guard.skipped == 1 and trainer.callback_metrics["train/nonfinite_steps"] == 1
    assert torch.equal(poison.weights[1], poison.weights[2])  # the poisoned step changed nothing
    assert not torch.equal(poison.weights[2], poison.weights[3])  # and training went on
    assert all(torch.isfinite(p).all() for p in module.parameters())
    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "last.safetensors")
    assert ckpt["global_step"] == 4 and ckpt["callbacks"]["NonFiniteGuard"]["skipped"] == 1


def test_stop_policy_names_step_and_batch_and_keeps_the_last_good_checkpoint(make_config, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(epoch 0, batch 2 of the epoch\).*last good checkpoint"):
        fit(make_config(*QUIET, "callbacks.nonfinite.policy=stop"), PoisonBatch({2}))
    folder = CheckpointFolder(tmp_path / "checkpoints")
    assert [s for s, _ in folder.snapshots()] == [1, 2]
    assert load_checkpoint_file(folder.last)["global_step"] == 2  # saved before the fault, nothing after


def test_a_diverged_run_stops_and_never_writes_nan_weights(make_config, tmp_path):
    """The issue's lr 1e6: weights blow up; skipping does not help for long, and no checkpoint holds NaN/Inf."""
    with pytest.raises((NonFiniteLossError, NonFiniteError)):
        fit(make_config(*QUIET, "trainer.max_steps=12", "optim.lr=1e6", "trainer.gradient_clip_val=null",
                        "callbacks.nonfinite.max_consecutive=2"))
    for _, path in CheckpointFolder(tmp_path / "checkpoints").snapshots():
        load_checkpoint_file(path)  # every file written is finite (loading refuses NaN/Inf)


def test_nan_noise_offset_stops_after_consecutive_skips(make_config, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"after 1 skipped steps in a row"):
        fit(make_config(*QUIET, "objective.noise.offset=nan", "callbacks.nonfinite.max_consecutive=2"))
    last = load_checkpoint_file(tmp_path / "checkpoints" / "last.safetensors")
    assert last["global_step"] == 1  # the skipped step's (unchanged, finite) weights


def test_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="callbacks.nonfinite.policy='ignore'"):
        NonFiniteGuard(policy="ignore")
