"""The `Objective` contract (ARCHITECTURE.md, "The contracts"): noising process, training target and its inverses.

Every objective writes its forward process as `x_t = alpha(t) * x0 + sigma(t) * noise` with `t` in [0, 1]
(0 = clean, 1 = noise), so samplers and weightings can be written once against `alpha_sigma`.
Subclasses choose the schedule (`alpha_sigma`) and the parameterization (`target`, `to_x0`, `to_eps`);
the timestep sampler, loss weighting and noise sampler are separate components passed in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from illustrious.objectives.noise import GaussianNoise
from illustrious.objectives.timesteps import TimestepSampler, Uniform


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample (n,) tensor reshaped to broadcast against x (n, ...)."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


class Objective(nn.Module):
    # What the network predicts ("eps", "v", "flow"); weightings with per-parameterization forms look it up.
    prediction: str | None = None

    def __init__(
        self,
        timesteps: TimestepSampler | None = None,
        weighting: nn.Module | None = None,
        noise: GaussianNoise | None = None,
    ):
        super().__init__()
        self.timesteps = timesteps if timesteps is not None else Uniform()
        self.weighting = weighting
        self.noise = noise if noise is not None else GaussianNoise()

    def check_components(self) -> None:
        """Reject component combinations that cannot work; subclasses call this once their schedule exists."""
        check = getattr(self.weighting, "check", None)
        if check is not None:
            check(self)

    # -- schedule -------------------------------------------------------------------------------------
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Signal and noise scales at time t, each shaped like t."""
        raise NotImplementedError

    def sampling_times(self, steps: int, shift: float | None = None) -> Tensor:
        """Decreasing inference times, `steps + 1` of them, ending at 0 (= return the clean estimate)."""
        raise NotImplementedError

    def snr(self, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return alpha**2 / sigma**2

    def discretize(self, t: Tensor) -> Tensor:
        """Round continuous times onto the objective's training grid (identity for continuous schedules)."""
        return t

    # -- contract ---------------------------------------------------------------------------------------
    def sample_t(self, n: int, *, generator: torch.Generator | None = None, image_seq_len: int | None = None,
                 device: torch.device | str | None = None, progress: float | None = None) -> Tensor:
        """`n` training times; `progress` (the fraction of training done) is for samplers that change with it."""
        t = self.timesteps(n, generator=generator, image_seq_len=image_seq_len, device=device, progress=progress)
        return self.discretize(t)

    def sample_noise(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The noise the target is built from."""
        return self.noise(x0, generator=generator)

    def input_noise(self, noise: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The noise that goes into `x_t`; differs from `noise` only under input perturbation."""
        return self.noise.perturb(noise, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def to_x0(self, x_t: Tensor, pred: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def to_eps(self, x_t: Tensor, pred: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def eps_scale(self, t: Tensor) -> Tensor:
        """|d eps / d prediction| at fixed x_t: how large a noise error a unit prediction error makes.

        eps: 1, v: alpha, flow: 1 - t. Read off `to_eps`, which is linear in the prediction (zero at x_t = 0),
        so weightings defined on the noise error (min-SNR) carry over to any objective.
        """
        x = torch.zeros(t.shape[0], 1, device=t.device)
        return self.to_eps(x, torch.ones_like(x), t).reshape(-1).abs()

    def loss_weight(self, t: Tensor) -> Tensor:
        if self.weighting is None:
            return torch.ones_like(t)
        return self.weighting(t, self)
