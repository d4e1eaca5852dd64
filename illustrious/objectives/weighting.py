"""Per-sample loss weights, called as `weighting(t, objective) -> (n,)`.

MinSNR and DebiasedEstimation are functions of the objective's SNR, alpha^2 / sigma^2, taken from its own
schedule (so after a zero-terminal-SNR rescale, the weights follow the rescaled schedule, as kohya's `all_snr`
does). VelocityLoss measures a flow objective's error on the velocity it implies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from illustrious.errors import ConfigError
from illustrious.objectives.flow import FlowObjective


class MinSNR(nn.Module):
    """Min-SNR-gamma (Hang et al. 2023): the clean-image loss weighted by min(snr, gamma).

    Expressed for the objective's own target through how a prediction error becomes a noise error
    (`objective.eps_scale`), which gives exactly the published forms: eps min(snr, gamma) / snr,
    v min(snr, gamma) / (snr + 1) (kohya's `apply_snr_weight`), and for flow min(snr, gamma) t^2.
    min(snr, gamma) / snr is computed as gamma / max(snr, gamma): equal wherever snr > 0, and 1 (its limit)
    at zero SNR, where kohya's eps form is 0 / 0.
    """

    def __init__(self, gamma: float = 5.0):
        super().__init__()
        if gamma <= 0:
            raise ConfigError(f"objective.weighting.gamma={gamma}: must be > 0 (5 is the paper's choice).")
        self.gamma = gamma

    def forward(self, t: Tensor, objective) -> Tensor:
        snr = objective.snr(t).float()
        eps_weight = self.gamma / snr.clamp(min=self.gamma)
        return eps_weight * objective.eps_scale(t).float() ** 2


class VelocityLoss(nn.Module):
    """The objective's target error measured as the velocity error it makes (JiT's "v-loss", Li & He 2025), for
    flow-schedule objectives: v = noise - x0, weight (d v / d prediction)^2 at fixed x_t, read off `to_eps` and
    `to_x0` (both linear in the prediction). flow: 1 everywhere (its target is v); flow_x0: 1 / t^2. The time is
    floored at `t_floor` first, as JiT floors the 1 / t it divides by (0.05), so the weight stays finite near 0.
    """

    def __init__(self, t_floor: float = 0.05):
        super().__init__()
        if not 0 < t_floor <= 1:
            raise ConfigError(f"objective.weighting.t_floor={t_floor}: must be in (0, 1] (JiT uses 0.05).")
        self.t_floor = t_floor

    def check(self, objective) -> None:
        if not isinstance(objective, FlowObjective):
            raise ConfigError(f"objective.weighting=velocity measures the error as a rectified-flow velocity; "
                              f"{type(objective).__name__} is not a flow objective. Use objective=flow or flow_x0.")

    def forward(self, t: Tensor, objective) -> Tensor:
        t = t.float().clamp(min=self.t_floor)
        x, one = t.new_zeros(t.shape[0], 1), t.new_ones(t.shape[0], 1)
        return (objective.to_eps(x, one, t) - objective.to_x0(x, one, t)).reshape(-1) ** 2


def _debiased_eps(snr: Tensor) -> Tensor:
    return 1 / snr.sqrt()


def _debiased_v(snr: Tensor) -> Tensor:
    return 1 / (snr + 1)


class DebiasedEstimation(nn.Module):
    """Debiased estimation loss (Yu et al. 2024), as kohya's `apply_debiased_estimation`:
    eps-prediction 1 / sqrt(snr), v-prediction 1 / (snr + 1), with snr capped at `max_snr` (1000)."""

    FORMS = {"eps": _debiased_eps, "v": _debiased_v}

    def __init__(self, max_snr: float = 1000.0):
        super().__init__()
        if max_snr <= 0:
            raise ConfigError(f"objective.weighting.max_snr={max_snr}: must be > 0.")
        self.max_snr = max_snr

    def form(self, objective):
        prediction = getattr(objective, "prediction", None)
        if prediction not in self.FORMS:
            raise ConfigError(f"objective.weighting=debiased is defined for eps- and v-prediction (kohya's forms); "
                              f"{type(objective).__name__} predicts {prediction!r}. Use objective=eps or objective=vpred, "
                              "or another weighting.")
        return self.FORMS[prediction]

    def check(self, objective) -> None:
        """Refuse a schedule on which the weight is infinite (eps-prediction reaching zero SNR)."""
        form = self.form(objective)
        noisiest = objective.discretize(torch.ones(1))
        if not torch.isfinite(form(objective.snr(noisiest).float())).all():
            raise ConfigError("objective.weighting=debiased: the eps-prediction weight 1 / sqrt(snr) is infinite at "
                              "zero SNR, which objective.zero_terminal_snr=true puts at the last step. "
                              "Use objective=vpred, or objective.zero_terminal_snr=false.")

    def forward(self, t: Tensor, objective) -> Tensor:
        snr = objective.snr(t).float().clamp(max=self.max_snr)
        return self.form(objective)(snr)
