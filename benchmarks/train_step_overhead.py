"""Training-step throughput: the framework (Lightning Trainer + our callbacks) against a hand-written loop.

Both train the same tiny model from the same state, on the same batches, with the same AdamW, gradient
clipping and LR schedule; the hand loop calls the same backbone and objective code, so the ratio
isolates what the trainer, its logging and its callbacks cost. Each round runs both, in alternating
order, so machine noise hits both; the result is the median of the per-round ratios.

    uv run python benchmarks/train_step_overhead.py [--steps 40] [--rounds 5] [backbone=sdxl_tiny ...]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import lightning as L
import torch
from hydra.utils import instantiate

from benchmarks.common import compose, machine, median
from illustrious.train import build_module, build_trainer

WARMUP = 5  # steps excluded from timing (allocator warm-up, first-iteration costs)


class StepTimer(L.Callback):
    def __init__(self):
        self.start = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start


def framework(cfg, module, datamodule, steps: int) -> float:
    cfg = copy.deepcopy(cfg)
    cfg.trainer.max_steps = steps
    trainer = build_trainer(cfg)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    return (steps - WARMUP) / timer.seconds


def hand_loop(module, datamodule, steps: int, clip: float) -> float:
    backbone, objective = module.backbone, module.objective
    opt_cfg = module.configure_optimizers()
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loader = iter(datamodule.train_dataloader())
    module.train()
    for step in range(steps):
        if step == WARMUP:
            start = time.perf_counter()
        batch = next(loader)
        x0 = backbone.encode_image(batch["pixels"])
        cond = backbone.encode_text(batch["captions"])
        noise = objective.sample_noise(x0)
        t = objective.sample_t(x0.shape[0], image_seq_len=backbone.image_seq_len(x0), device=x0.device)
        pred = backbone(objective.add_noise(x0, objective.input_noise(noise), t), t, cond, batch)
        per_sample = (pred.float() - objective.target(x0, noise, t).float()).pow(2).flatten(1).mean(1)
        loss = (per_sample * objective.loss_weight(t)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (steps - WARMUP) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = tempfile.mkdtemp()
    # The framework as configured by default, minus the end-of-training sampling (a separate feature).
    cfg = compose([*args.overrides, "callbacks.samples=null", "callbacks.composition=null",
                   "callbacks.checkpoint=null", "trainer.enable_checkpointing=false"], out)
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    initial = build_module(cfg)
    rows = []
    for r in range(args.rounds):
        # alternate which runs first, so drift in the machine's load does not favour either
        if r % 2 == 0:
            fw = framework(cfg, copy.deepcopy(initial), datamodule, args.steps)
            hand = hand_loop(copy.deepcopy(initial), datamodule, args.steps, cfg.trainer.gradient_clip_val)
        else:
            hand = hand_loop(copy.deepcopy(initial), datamodule, args.steps, cfg.trainer.gradient_clip_val)
            fw = framework(cfg, copy.deepcopy(initial), datamodule, args.steps)
        rows.append((fw, hand, fw / hand))
        print(f"round {r}: framework {fw:.2f} it/s, hand loop {hand:.2f} it/s, ratio {fw / hand:.3f}", flush=True)
    print(f"\nmachine: {machine()}")
    print(f"config: {' '.join(args.overrides) or 'default'} (batch {cfg.data.batch_size}), {args.steps} steps x {args.rounds} rounds")
    print(f"median framework {median([r[0] for r in rows]):.2f} it/s, hand loop {median([r[1] for r in rows]):.2f} it/s, "
          f"median ratio {median([r[2] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
