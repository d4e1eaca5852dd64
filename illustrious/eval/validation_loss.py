"""A validation loss that compares across objectives and runs: the clean-latent (x0) error at fixed times.

Training losses of eps, v and flow models measure errors against different targets, so their numbers cannot be
compared. Every objective converts its prediction to a clean estimate (`Objective.to_x0`), so the error of that
estimate, mean((x0_hat - x0)^2) over latent elements, is one axis for all of them.

Low variance and the same numbers on every rerun: each held-out sample is evaluated at every one of `bins`
fixed times, the midpoints t_k = (k + 0.5) / bins (snapped onto a discrete objective's grid), with standard
Gaussian noise drawn from a private generator seeded by (seed, batch, rank) -- not from the training RNG, which
is left exactly as it was. The noise is plain: the objective's noise options (offset, pyramid, input
perturbation) are training tricks, left out so runs that differ in them stay comparable.

Reported (averaged over the held-out samples): `val/x0_mse_bin_<k>` per bin, `val/x0_mse` their mean (a uniform
average over t), and `val/loss`, the objective's own weighted loss against its target over the same bins.
With EMA on, Lightning validates the averaged weights. x0 errors compare runs of the same backbone (the same
latent space).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from illustrious.backbones.base import Backbone, Conditioning
from illustrious.objectives.base import Objective


class ValidationLoss:
    def __init__(self, bins: int = 8, seed: int = 0):
        if bins < 1:
            raise ValueError(f"validation.bins={bins}: must be >= 1.")
        self.bins, self.seed = bins, seed

    def times(self, objective: Objective) -> Tensor:
        """(bins,) bin midpoints on the objective's grid."""
        midpoints = (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins
        return objective.discretize(midpoints.float())

    def noise(self, x0: Tensor, batch_idx: int, rank: int = 0) -> Tensor:
        """Standard normal noise for one batch, a function of (seed, batch_idx, rank) only (drawn on the CPU)."""
        key = int(np.random.SeedSequence([self.seed, batch_idx, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
        generator = torch.Generator().manual_seed(key)
        return torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)

    @torch.no_grad()
    def __call__(self, backbone: Backbone, objective: Objective, x0: Tensor, cond: Conditioning,
                 batch: Mapping, batch_idx: int, rank: int = 0) -> dict[str, Tensor]:
        """The metrics of one validation batch (means over its samples)."""
        noise = self.noise(x0, batch_idx, rank)
        metrics: dict[str, Tensor] = {}
        x0_mse, losses = [], []
        devices = [x0.device] if x0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # whatever the model draws, the training RNG is untouched
            for k, t_k in enumerate(self.times(objective).tolist()):
                t = torch.full((x0.shape[0],), t_k, device=x0.device)
                x_t = objective.add_noise(x0, noise, t)
                pred = backbone(x_t, t, cond, batch).float()
                x0_hat = objective.to_x0(x_t.float(), pred, t)
                per_sample = (x0_hat - x0.float()).pow(2).flatten(1).mean(1)
                target = objective.target(x0.float(), noise.float(), t)
                loss = (pred - target).pow(2).flatten(1).mean(1) * objective.loss_weight(t)
                metrics[f"val/x0_mse_bin_{k}"] = per_sample.mean()
                x0_mse.append(per_sample.mean())
                losses.append(loss.mean())
        metrics["val/x0_mse"] = torch.stack(x0_mse).mean()
        metrics["val/loss"] = torch.stack(losses).mean()
        return metrics
