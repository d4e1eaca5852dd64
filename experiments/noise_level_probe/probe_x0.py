"""At which noise level does a trained shapes model decide each figure? (issue 7, item 1)

Loads a training checkpoint, noises held-out shapes images (a data seed the run never trained on) to a grid
of times t with fixed noise, and judges the model's clean-image prediction x0(x_t, t, prompt) with the shapes
judge (eval/composition.py): composition, shape, background, cleanliness. Also prints, per prompted
background colour, the mean predicted value of the image's corner pixels (background in almost every layout;
-1 black, 0 grey, +1 white), which shows whether the prediction at t near 1 follows the prompt's background
word or only copies what x_t shows.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/noise_level_probe/probe_x0.py \
        outputs/<run>/checkpoints/last.safetensors [--times 1 0.95 0.9 0.8 0.6 0.4 0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from illustrious.data.sources.shapes import BACKGROUNDS, Layout, ShapesDataset
from illustrious.eval.composition import judge, summarize
from illustrious.weights.rebuild import module_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--times", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    parser.add_argument("--num", type=int, default=64, help="held-out images")
    parser.add_argument("--data-seed", type=int, default=12345, help="a shapes seed the run did not train on")
    parser.add_argument("--caption", default="sentence", choices=["sentence", "tags"])
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()

    module, _, _ = module_from_checkpoint(args.checkpoint)
    module.eval()
    backbone, objective = module.backbone, module.objective
    data = ShapesDataset(length=args.num, seed=args.data_seed)
    items = [data[i] for i in range(args.num)]
    pixels = torch.stack([torch.as_tensor(item["pixels"]) for item in items])
    layouts = [Layout.from_dict(item["layout"]) for item in items]
    prompts = [item["captions"][args.caption] for item in items]
    rows = []
    with torch.no_grad():
        latents = backbone.encode_image(pixels)
        cond = backbone.encode_text(prompts)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        for time_ in args.times:
            t = torch.full((len(items),), time_)
            x_t = objective.add_noise(latents, noise, t)
            x0 = backbone.decode(objective.to_x0(x_t, backbone(x_t, t, cond), t)).clamp(-1, 1)
            corners = x0[:, :, :3, :3].mean((1, 2, 3))
            row = {"t": time_, **summarize(judge(x0, layouts))}
            for name in BACKGROUNDS:
                picked = [i for i, layout in enumerate(layouts) if layout.background == name]
                row[f"corner_{name}"] = float(corners[picked].mean()) if picked else float("nan")
            rows.append(row)
    truth = summarize(judge(pixels, layouts))
    print("the held-out images themselves:", {k: round(v, 3) for k, v in truth.items()})
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.3f}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "truth": truth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
