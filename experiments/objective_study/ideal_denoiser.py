"""The schedule alone, with a perfect model: sample the shapes training set with its exact denoiser.

For an empirical data set {x_i}, the optimal denoiser is E[x0 | x_t] = sum_i softmax_i(-|x_t - alpha x_i|^2 /
(2 sigma^2)) x_i -- what any parameterization (eps, v, flow) converges to with unlimited capacity and training.
Sampling it from pure noise with each schedule's grid isolates what the *schedule* does: SDXL's scaled-linear
schedule ends at alpha_T = 0.068, so true x_T still carries 0.068 x0; starting from pure noise, the denoiser reads
the missing signal as "x0 close to 0", i.e. mid-grey. Zero-terminal SNR and flow start where x_T really is noise.
Training images sit on black, white or grey backgrounds in equal shares; this counts the samples' shares.

    .venv/bin/python experiments/objective_study/ideal_denoiser.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from illustrious.data.sources.shapes import BACKGROUNDS, ShapesDataset
from illustrious.eval.trajectory import luminance
from illustrious.objectives import EpsilonObjective, FlowObjective, VPredictionObjective
from illustrious.sampling.samplers import SAMPLERS

SCHEDULES = {
    "sdxl (eps / v, as Illustrious v0.1-2.0)": lambda: EpsilonObjective(zero_terminal_snr=False),
    "sdxl zero-terminal-SNR (v, as v3.0-vpred)": lambda: VPredictionObjective(zero_terminal_snr=True),
    "flow (bigASP v2.5, Lumina-2)": lambda: FlowObjective(),
}


def ideal_denoiser(data: torch.Tensor, alpha_sigma):
    """E[x0 | x_t] for the empirical distribution `data` (n, d) under x_t = alpha x0 + sigma eps."""
    norms = data.pow(2).sum(1)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (v.item() for v in alpha_sigma(t.reshape(1)))
        logits = (2 * alpha * x.flatten(1) @ data.T - alpha**2 * norms) / (2 * sigma**2)
        return (torch.softmax(logits, dim=1) @ data).reshape(x.shape)

    return denoise


def background_of(pixels: torch.Tensor) -> list[str]:
    """The background a sample landed on: the palette colour nearest to its border pixels."""
    border = torch.cat([pixels[:, :, 0], pixels[:, :, -1], pixels[:, :, :, 0], pixels[:, :, :, -1]], dim=-1)
    rgb = (border.median(dim=-1).values + 1) * 127.5  # (n, 3)
    names = list(BACKGROUNDS)
    palette = torch.tensor([BACKGROUNDS[n] for n in names], dtype=torch.float32)
    return [names[i] for i in torch.cdist(rgb, palette).argmin(1).tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="training images the ideal denoiser knows")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200,
                        help="many: with few steps the empirical ideal denoiser collapses to its lowest-norm images "
                             "(mid-grey backgrounds) on every schedule, a discretisation effect")
    parser.add_argument("--samplers", nargs="+", default=["euler"], choices=sorted(SAMPLERS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ideal_denoiser.json")
    args = parser.parse_args()

    dataset = ShapesDataset(length=args.images, width=32, height=32, seed=0)
    pixels = torch.stack([torch.from_numpy(dataset[i]["pixels"]) for i in range(args.images)])
    data = pixels.flatten(1)
    shares = {b: background_of(pixels).count(b) / args.images for b in BACKGROUNDS}
    results = {"training": {"background_share": shares, "mean_luminance": luminance(pixels).mean().item()},
               "settings": vars(args) | {"out": str(args.out)}}
    noise = torch.randn(args.samples, *pixels.shape[1:], generator=torch.Generator().manual_seed(0))
    for name, make in SCHEDULES.items():
        obj = make()
        for sampler in args.samplers:
            start = time.process_time()
            x = SAMPLERS[sampler](ideal_denoiser(data, obj.alpha_sigma), noise.clone(),
                                  obj.sampling_times(args.steps), obj.alpha_sigma)
            landed = background_of(x)
            lum = luminance(x.clamp(-1, 1))
            results[f"{name} / {sampler}"] = {
                "background_share": {b: landed.count(b) / args.samples for b in BACKGROUNDS},
                "mean_luminance": lum.mean().item(),
                "share_darker_than_0.2": (lum < 0.2).float().mean().item(),
                "share_brighter_than_0.8": (lum > 0.8).float().mean().item(),
                "cpu_s": time.process_time() - start,
            }
            print(name, sampler, json.dumps(results[f"{name} / {sampler}"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
