"""Which caption words does a trained checkpoint read? Its loss with the true caption against one word kind swapped.

For held-out shapes images (the run's own held-out stream), each noised at a few fixed t with fixed noise, the
objective's loss is measured with the true sentence, with every shape word swapped for another shape, every colour
swapped for another colour, the background swapped, and with the empty prompt. A model that ignores a word kind
loses nothing when it is swapped; one that draws what the word says pays for the swap at the noise levels where
that word decides the image. For scale, the last row gives what each swap changes in the clean image itself
(each image redrawn with the swapped words and its own size and jitter): the share of pixels that change, and the
mean squared change in the model's [-1, 1] range. Deterministic: the same checkpoint gives the same table.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/training_budget/word_probe.py CHECKPOINT [CHECKPOINT ...] \
        [--images 256] [--t 0.9 0.7 0.5 0.3 0.1] [--grid OUT.png]
`--grid` also draws, per checkpoint, one row per shape word (the same four colours and backgrounds and the same
seed in every row, CFG as the checkpoint's run sampled), enlarged 6x: OUT_<checkpoint file name>.png.
Numbers and the write-up: README.md beside this ("Which words the default model reads").
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from illustrious.data.sources.shapes import (
    BACKGROUNDS,
    SHAPE_COLOURS,
    SHAPES,
    Layout,
    ShapesDataset,
    draw,
    random_layout,
)
from illustrious.data.sources.shapes_datamodule import HELD_OUT_SEED_OFFSET
from illustrious.eval.composition import to_uint8
from illustrious.weights.rebuild import module_from_checkpoint

KINDS = ("shape", "colour", "background")


def swapped(layout: Layout, kind: str, rng: random.Random) -> Layout:
    """The layout with every word of one kind replaced by a different word of that kind."""
    def other(options, current):
        return rng.choice([o for o in options if o != current])

    if kind == "background":
        return Layout(other(list(BACKGROUNDS), layout.background), layout.shapes)
    field, options = {"shape": ("shape", SHAPES), "colour": ("colour", list(SHAPE_COLOURS))}[kind]
    return Layout(layout.background,
                  tuple(replace(s, **{field: other(options, getattr(s, field))}) for s in layout.shapes))


def image_change(held: ShapesDataset, count: int, kind: str) -> tuple[float, float]:
    """(share of pixels changed, mean squared change) when each of the first `count` held-out images is redrawn
    with one word kind swapped, keeping its own shape sizes and jitter (drawn after the layout from its rng)."""
    rng, changed, squared = random.Random(0), [], []
    for index in range(count):
        layout_rng = held.rng(index)
        layout = random_layout(layout_rng, held.max_shapes, held.mixed_order)
        state = layout_rng.getstate()
        images = []
        for drawn in (layout, swapped(layout, kind, rng)):
            layout_rng.setstate(state)
            images.append(np.asarray(draw(drawn, held.width, held.height, layout_rng), np.float32) / 127.5 - 1)
        difference = images[1] - images[0]
        changed.append(float((np.abs(difference).max(-1) > 0.1).mean()))
        squared.append(float((difference ** 2).mean()))
    return float(np.mean(changed)), float(np.mean(squared))


@torch.no_grad()
def probe(module, cfg, images: int, ts: list[float]) -> tuple[list[dict], dict]:
    """Per t, the loss with each prompt set; and what each swap changes in the clean images."""
    held = ShapesDataset(length=100_000, width=int(cfg.data.width), height=int(cfg.data.height),
                         seed=int(cfg.seed) + HELD_OUT_SEED_OFFSET)
    items = [held[i] for i in range(images)]
    layouts = [Layout.from_dict(item["layout"]) for item in items]
    x0 = module.backbone.encode_image(torch.stack([torch.as_tensor(item["pixels"]) for item in items]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    rng = random.Random(0)
    prompts = {"true": [layout.sentence() for layout in layouts], "empty": [""] * images}
    prompts |= {kind: [swapped(layout, kind, rng).sentence() for layout in layouts] for kind in KINDS}
    conditioning = {name: module.backbone.encode_text(p) for name, p in prompts.items()}
    rows = []
    for t_value in ts:
        t = torch.full((images,), t_value)
        x_t = module.objective.add_noise(x0, noise, t)
        target = module.objective.target(x0, noise, t)
        losses = {name: float((module.backbone(x_t, t, cond, {}) - target).pow(2).mean())
                  for name, cond in conditioning.items()}
        rows.append({"t": t_value, **losses})
    changes = {kind: image_change(held, images, kind) for kind in KINDS}
    return rows, changes


GRID_PROMPTS = (("red", "black"), ("blue", "white"), ("yellow", "grey"), ("green", "black"))


@torch.no_grad()
def shape_rows(module, cfg, out: Path, seed: int = 7, scale: int = 6, **sampling) -> None:
    """One row per shape word, prompts otherwise equal: a model that ignores the word draws three equal rows."""
    height, width = int(cfg.data.height), int(cfg.data.width)
    rows = []
    for shape in SHAPES:
        prompts = [f"A {colour} {shape} in the center, on a {background} background."
                   for colour, background in GRID_PROMPTS]
        images = to_uint8(module.generate(prompts, height=height, width=width, seed=seed, **sampling))
        rows.append(np.concatenate(list(images), axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--t", type=float, nargs="+", default=[0.9, 0.7, 0.5, 0.3, 0.1])
    parser.add_argument("--grid", type=Path, help="also draw the shape rows of each checkpoint (a .png path)")
    parser.add_argument("--cfg-trunc-ratio", type=float, help="the grid's CFG truncation (default: the run's own)")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        module, cfg, _ = module_from_checkpoint(checkpoint)
        module.eval()
        if args.grid:
            sampling = {} if args.cfg_trunc_ratio is None else {"cfg_trunc_ratio": args.cfg_trunc_ratio}
            shape_rows(module, cfg, args.grid.with_name(f"{args.grid.stem}_{Path(checkpoint).stem}.png"), **sampling)
        print(f"\n{checkpoint}\n")
        print("| t | loss, true caption | shape swapped | colour swapped | background swapped | empty prompt |")
        print("|---|---|---|---|---|---|")
        rows, changes = probe(module, cfg, args.images, args.t)
        for row in rows:
            true = row["true"]
            cells = [f"{row[k]:.4f} ({100 * (row[k] / true - 1):+.1f} %)" for k in (*KINDS, "empty")]
            print(f"| {row['t']} | {true:.4f} | " + " | ".join(cells) + " |")
        cells = [f"{100 * share:.1f} % of pixels, {squared:.3f}" for share, squared in changes.values()]
        print("| the clean image | | " + " | ".join(cells) + " | |")


if __name__ == "__main__":
    main()
