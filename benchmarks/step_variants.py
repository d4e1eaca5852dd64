"""Training-step time of config variants against a base, interleaved in one process.

Each variant is a name and its Hydra overrides; every round times one optimizer step (forward, backward,
AdamW) of each variant on its own fixed batch from the shapes data, in turn, so machine noise hits all of
them alike. Reports the median step per variant and its ratio to the first one. The first step of each
variant is reported apart (it includes torch.compile's compilation where the variant asks for it). Used to
price the default run's levers (patch size, pixel-autoencoder factor, batch size, regional compilation)
before spending minutes of training on them.

    uv run python benchmarks/step_variants.py base= "patch1=+backbone.transformer.patch_size=1" \\
        "b16=data.batch_size=16" [--rounds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch

from benchmarks.common import compose, machine, median
from illustrious.config import instantiate
from illustrious.train import build_module


def build_training(overrides: list[str], output_dir: str):
    """(module, AdamW, an iterator over the config's training batches), outside a Trainer."""
    cfg = compose(overrides, output_dir)
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    datamodule.setup("fit")
    module = build_module(cfg, instantiate(cfg.backbone)).train()
    module.log = lambda *args, **kwargs: None  # outside a Trainer: nothing to log to
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, fused=True)
    return module, optimizer, iter(datamodule.train_dataloader())


def build(overrides: list[str], output_dir: str):
    """(module, AdamW, one fixed batch): every round of a variant times the same batch."""
    module, optimizer, batches = build_training(overrides, output_dir)
    return module, optimizer, next(batches)


def step(module, optimizer, batch, forward_context=contextlib.nullcontext) -> float:
    """Seconds for one optimizer step; `forward_context()` wraps the forward pass (e.g. an autocast)."""
    start = time.perf_counter()
    with forward_context():
        loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="name=override,override,... (the first is the base)")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    variants = {}
    for spec in args.variants:
        name, _, overrides = spec.partition("=")
        variants[name] = [o for o in overrides.split(",") if o]
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        built = {name: build(overrides, tmp) for name, overrides in variants.items()}
        times = {name: [] for name in built}
        for round_ in range(args.rounds + 1):
            for name, parts in built.items():
                seconds = step(*parts)
                if round_:
                    times[name].append(seconds)
                else:
                    print(f"{name}: first step {seconds:.1f} s")
    base = median(next(iter(times.values())))
    for name, ts in times.items():
        print(f"{name:16s} {median(ts):.3f} s/step (median of {len(ts)})  x{median(ts) / base:.2f}")


if __name__ == "__main__":
    main()
