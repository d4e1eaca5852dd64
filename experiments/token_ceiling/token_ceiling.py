"""How well can a model that is right only at token level score on the shapes judge? (issue 7, item 1)

Takes training images of the shapes data, replaces each `pool` x `pool` pixel block by its mean colour (what a
denoiser whose tokens cover that block draws if it gets every token's average right and nothing inside it), and
judges the result with the shapes judge (eval/composition.py). The default tiny Lumina model's tokens cover 4x4
pixels (a factor-2 pixel autoencoder, patch 2), so its pool-4 figure is the ceiling of the shape figure for a
model without sub-token detail.

    .venv/bin/python experiments/token_ceiling/token_ceiling.py [--num 300] [--seed 5] [--pools 1 2 4]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from illustrious.data.sources.shapes import Layout, ShapesDataset
from illustrious.eval.composition import judge, summarize, to_uint8


def block_means(images: np.ndarray, pool: int) -> np.ndarray:
    """(N, 3, H, W) -> the same size, each pool x pool block filled with its mean."""
    n, c, h, w = images.shape
    means = images.reshape(n, c, h // pool, pool, w // pool, pool).mean((3, 5))
    return means.repeat(pool, 2).repeat(pool, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=300, help="training images")
    parser.add_argument("--seed", type=int, default=5, help="data seed")
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    data = ShapesDataset(length=args.num, seed=args.seed)
    items = [data[i] for i in range(args.num)]
    images = np.stack([item["pixels"] for item in items])
    layouts = [Layout.from_dict(item["layout"]) for item in items]
    for pool in args.pools:
        figures = summarize(judge(to_uint8(block_means(images, pool)), layouts))
        print(json.dumps({"pool": pool, **{k: round(v, 3) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
