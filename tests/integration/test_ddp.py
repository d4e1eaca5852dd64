"""DDP on the CPU (gloo, 2 processes) through the real CLI and the `trainer=ddp` preset.

Each sample's noise and time follow from its pixels (tests/integration/ddp_helpers.py), and the data set is
exactly one global batch, so two processes with batch 2 see the same samples and draws as one process with
batch 4. Equal losses at every step after the first then mean the gradients were averaged across processes;
the preset runs without `find_unused_parameters`, so every trainable parameter got a gradient.
"""

from __future__ import annotations

import pytest

from illustrious.train import train
from tests.conftest import REPO, run_cli

STEPS = 3
# Only float summation order differs (gradients reduced across processes, losses averaged per rank), which
# moves fp32 losses by ~1e-7 relative per step; 1e-4 leaves room for that over a few Adam steps while a missing
# gradient average (each process stepping on its half) changes the loss at step 2 by far more.
RTOL = 1e-4

SAME_DRAWS = [
    "objective._target_=tests.integration.ddp_helpers.SampleSeededFlow",
    "captions.dropout=0", "captions.styles.tags=1", "captions.styles.sentence=0",
    "data.length=4", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "callbacks.samples=null", "callbacks.composition=null", "callbacks.throughput=null", "callbacks.checkpoint=null",
    "optim.lr_scheduler.num_warmup_steps=1",
]


def logged_losses(output_dir) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in output_dir.glob("tensorboard/**/events.out.tfevents.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("train/loss"), key=lambda e: e.step)]


@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_two_processes_match_one_with_the_same_global_batch(backbone, make_config, tmp_path):
    ddp_dir = tmp_path / "ddp"
    proc = run_cli(f"backbone={backbone}", *SAME_DRAWS, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "data.batch_size=2", f"hydra.run.dir={ddp_dir}", cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (ddp_dir / "train_ddp_process_1.log").is_file()  # the second process ran

    single_dir = tmp_path / "single"
    metrics, _ = train(make_config(f"backbone={backbone}", *SAME_DRAWS, "trainer=cpu", "data.batch_size=4",
                                   fast=False, output_dir=single_dir))
    assert metrics["global_step"] == STEPS

    ddp, single = logged_losses(ddp_dir), logged_losses(single_dir)
    assert len(ddp) == len(single) == STEPS
    assert ddp == pytest.approx(single, rel=RTOL), (ddp, single)
    assert len(set(single)) == STEPS  # the model trained: losses change from step to step


@pytest.mark.xfail(strict=True, reason=(
    "known open (issue 9): the verified single-file checkpoint callback (callbacks/checkpointing.py, RunCheckpoint) "
    "gathers a full state dict on one rank and the other FSDP2 rank leaves the barrier; sharded saving must go "
    "through the strategy's own save_checkpoint on every rank"))
def test_fsdp2_two_processes_on_the_cpu_save_sharded_and_consolidate(tmp_path):
    """trainer=fsdp2 with gloo: fully_shard per block in two processes, a sharded checkpoint folder, and one
    consolidated safetensors checkpoint holding every weight of the module."""
    from illustrious.checkpoint_io import load_checkpoint_file
    from illustrious.consolidate import consolidate

    run_dir = tmp_path / "fsdp2"
    proc = run_cli("trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                   "optim.optimizer.fused=false", "data.batch_size=2", "data.length=8", "trainer.max_steps=2",
                   "trainer.enable_progress_bar=false", "callbacks.samples=null", "callbacks.composition=null",
                   "callbacks.throughput=null", "optim.lr_scheduler.num_warmup_steps=1", f"hydra.run.dir={run_dir}",
                   cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sharded = run_dir / "checkpoints" / "last.safetensors"
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    with pytest.raises(ValueError, match="allow-pickle"):
        consolidate(sharded, tmp_path / "full.safetensors")
    checkpoint = load_checkpoint_file(consolidate(sharded, tmp_path / "full.safetensors", allow_pickle=True))
    assert checkpoint["global_step"] == 2 and len(checkpoint["optimizer_states"]) == 1

    from illustrious.config import instantiate
    from illustrious.train import build_module
    from tests.conftest import compose_config

    cfg = compose_config(["backbone=sdxl_tiny"], tmp_path / "reference")
    reference = build_module(cfg, instantiate(cfg.backbone)).state_dict()
    assert checkpoint["state_dict"].keys() == reference.keys()  # plain names: no wrapper or shard prefixes
    for name, tensor in checkpoint["state_dict"].items():
        assert tensor.shape == reference[name].shape, name
