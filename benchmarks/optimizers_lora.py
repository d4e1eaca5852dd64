"""What each optimizer and LoRA cost on a tiny backbone: trainable parameters, optimizer-state memory and
the time of one training step (forward, backward, optimizer step), median over repeated steps.

    uv run python benchmarks/optimizers_lora.py [--steps 12] [backbone=sdxl_tiny ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.common import compose, machine, median
from illustrious.config import instantiate
from illustrious.train import build_module

VARIANTS = {
    "adamw (full)": ["optim=adamw"],
    "adafactor (full)": ["optim=adafactor"],
    "prodigy (full)": ["optim=prodigy"],
    "adamw + LoRA r16 (denoiser)": ["optim=adamw", "lora=lora"],
    "adamw + LoRA r16 (denoiser + text encoders)": ["optim=adamw", "lora=lora", "lora.text_encoders=[text_encoders]"],
    "adamw + LoKr r16 (denoiser)": ["optim=adamw", "lora=lokr"],
    "adamw, gradient checkpointing (all)": ["optim=adamw", "gradient_checkpointing=[denoiser,text_encoders]"],
}


def state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


def measure(overrides: list[str], steps: int) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose([*overrides, "data.batch_size=8"], out)
        torch.manual_seed(0)
        module = build_module(cfg)
        module.train()
        optimizer = module.configure_optimizers()["optimizer"]
        dm = instantiate(cfg.data, captions=instantiate(cfg.captions))
        dm.setup("fit")
        batches = iter(dm.train_dataloader())
        times = []
        for _ in range(steps):
            batch = next(batches)
            start = time.perf_counter()
            loss = _loss(module, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        return trainable, state_bytes(optimizer), median(times[2:])


def _loss(module, batch):
    """The training step's loss without Lightning's logging (no trainer attached)."""
    module.log = lambda *a, **k: None
    return module.training_step(batch, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    args, overrides = parser.parse_known_args()
    print(machine())
    print(f"{'variant':48s} {'trainable':>10s} {'opt. state':>11s} {'step (s)':>9s}")
    for name, variant in VARIANTS.items():
        trainable, state, step = measure([*overrides, *variant], args.steps)
        print(f"{name:48s} {trainable:10,d} {state / 2**20:9.2f} MB {step:9.3f}")


if __name__ == "__main__":
    main()
