"""DDP on the CPU (gloo, 2 processes) through the real CLI and the `trainer=ddp` preset.

Each sample's noise and time follow from its pixels (tests/integration/ddp_helpers.py), and the data set is
exactly one global batch, so two processes with batch 2 see the same samples and draws as one process with
batch 4. Equal losses at every step after the first then mean the gradients were averaged across processes;
the preset runs without `find_unused_parameters`, so every trainable parameter got a gradient.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

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


FSDP2_RUN = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
             "optim.optimizer.fused=false", "data.batch_size=2", "data.length=8", "trainer.enable_progress_bar=false",
             "callbacks.samples=null", "callbacks.composition=null", "callbacks.throughput=null",
             "optim.lr_scheduler.num_warmup_steps=1"]


@contextmanager
def one_process_mesh(tmp_path):
    """A gloo group of one process in this process, rendezvous through a file: no MASTER_PORT in the environment
    (CLI runs started from here would inherit it and collide with this group's store)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_processes_save_sharded_resume_and_consolidate(tmp_path):
    """trainer=fsdp2 with gloo: fully_shard per block in two processes and RunCheckpoint saving a sealed sharded
    folder on every rank; the folder reads back without unpickling code (here in one process: another world size)
    to the weights torch's own reader gives, and consolidates into one safetensors checkpoint holding every weight
    of the module; the same command resumes from it (weights, optimizer, step) and samples at the end."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from illustrious import sharded_checkpoint
    from illustrious.backbones.parallel import apply_fsdp2
    from illustrious.callbacks.step_log import read_steps
    from illustrious.checkpoint_io import load_checkpoint_file
    from illustrious.config import instantiate
    from illustrious.consolidate import consolidate
    from illustrious.train import build_module
    from tests.conftest import compose_config

    run_dir = tmp_path / "fsdp2"
    proc = run_cli(*FSDP2_RUN, "trainer.max_steps=2", f"hydra.run.dir={run_dir}", cwd=REPO, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.safetensors"
    assert last.is_symlink() and last.resolve() == (checkpoints / "step-00000002.safetensors").resolve()
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    manifest = sharded_checkpoint.verify(last)
    assert manifest["global_step"] == 2 and manifest["world_size"] == 2
    with pytest.raises(ValueError, match="allow-pickle"):
        consolidate(last, tmp_path / "full.safetensors")
    checkpoint = load_checkpoint_file(consolidate(last, tmp_path / "full.safetensors", allow_pickle=True))
    assert checkpoint["global_step"] == 2 and len(checkpoint["optimizer_states"]) == 1

    cfg = compose_config([], tmp_path / "reference")
    module = build_module(cfg, instantiate(cfg.backbone))
    reference = module.state_dict()
    assert checkpoint["state_dict"].keys() == reference.keys()  # plain names: no wrapper or shard prefixes
    for name, tensor in checkpoint["state_dict"].items():
        assert tensor.shape == reference[name].shape, name

    # the same command, one more step: resumes from the sharded folder at step 2; with the sampling callbacks on
    # (sharded weights: every rank takes part in generating, rank 0 writes)
    with_samples = [a for a in FSDP2_RUN if a not in ("callbacks.samples=null", "callbacks.composition=null")]
    proc = run_cli(*with_samples, "callbacks.samples.num_prompts=2", "sampling.steps=2",
                   "callbacks.composition.num_samples=4", "trainer.max_steps=3", f"hydra.run.dir={run_dir}", cwd=REPO,
                   timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = proc.stdout + proc.stderr + "".join(p.read_text() for p in run_dir.glob("*.log"))
    assert "Resuming from" in logs
    assert sorted(read_steps(run_dir / "steps.jsonl")) == [1, 2, 3]
    assert last.resolve() == (checkpoints / "step-00000003.safetensors").resolve()
    resumed = load_checkpoint_file(consolidate(last, tmp_path / "step3.safetensors", allow_pickle=True))
    assert resumed["global_step"] == 3
    adam_steps = {float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3.0}  # the optimizer's moments continued (a fresh optimizer would count 1)
    assert (run_dir / "samples" / "final_step_000003.png").is_file()
    assert json.loads((run_dir / "composition.json").read_text())["num_samples"] == 4

    # step 2's folder read back safely in one process (DCP reshards 2 -> 1): the weights torch's own (pickle)
    # reader gives
    with one_process_mesh(tmp_path) as mesh:
        apply_fsdp2(module.backbone, mesh, activation_checkpointing=True)
        meta = sharded_checkpoint.load_into(checkpoints / "step-00000002.safetensors", module, [])
        loaded = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    assert meta["global_step"] == 2
    trained = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.autoencoder.")}
    assert trained and any(not torch.equal(trained[k], reference[k]) for k in trained)  # it trained
    for name, tensor in trained.items():
        assert torch.equal(loaded[name], tensor), name
