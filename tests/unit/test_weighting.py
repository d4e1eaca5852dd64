"""Loss weightings against the published formulas (kohya's sd-scripts `custom_train_functions.py`)."""

import pytest
import torch
from diffusers import DDPMScheduler

from illustrious.errors import ConfigError
from illustrious.objectives import (
    DebiasedEstimation,
    EpsilonObjective,
    FlowObjective,
    MinSNR,
    VPredictionObjective,
)


def kohya_all_snr(zero_snr: bool) -> torch.Tensor:
    """`prepare_scheduler_for_custom_training`: (sqrt(acp) / sqrt(1 - acp)) ** 2 per discrete step."""
    acp = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        rescale_betas_zero_snr=zero_snr).alphas_cumprod
    return (torch.sqrt(acp) / torch.sqrt(1.0 - acp)) ** 2


def kohya_apply_snr_weight(snr, gamma, v_prediction):
    min_snr_gamma = torch.minimum(snr, torch.full_like(snr, gamma))
    return torch.div(min_snr_gamma, snr + 1) if v_prediction else torch.div(min_snr_gamma, snr)


def kohya_apply_debiased_estimation(snr, v_prediction):
    snr = torch.minimum(snr, torch.ones_like(snr) * 1000)
    return 1 / (snr + 1) if v_prediction else 1 / torch.sqrt(snr)


def random_steps(n=256, seed=0):
    k = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed))
    k[:3] = torch.tensor([0, 1, 999])  # both ends of the schedule
    return k, k.float() / 1000


@pytest.mark.parametrize("gamma", [1.0, 5.0])
@pytest.mark.parametrize(("cls", "zero_snr"), [(EpsilonObjective, False), (VPredictionObjective, False),
                                               (VPredictionObjective, True)])
def test_min_snr_matches_kohya(cls, zero_snr, gamma):
    k, t = random_steps()
    obj = cls(zero_terminal_snr=zero_snr, weighting=MinSNR(gamma))
    expected = kohya_apply_snr_weight(kohya_all_snr(zero_snr)[k], gamma, v_prediction=cls is VPredictionObjective)
    torch.testing.assert_close(obj.loss_weight(t), expected)


def test_min_snr_eps_at_zero_snr_is_its_limit_not_nan():
    obj = EpsilonObjective(zero_terminal_snr=True, weighting=MinSNR(5.0))
    t = torch.tensor([0.999, 0.998])
    w = obj.loss_weight(t)
    assert torch.isfinite(w).all()
    assert w[0] == 1.0  # min(snr, g) / snr -> 1 as snr -> 0 (kohya's formula gives 0 / 0 there)
    assert torch.isnan(kohya_apply_snr_weight(obj.snr(t[:1]), 5.0, v_prediction=False)).all()


@pytest.mark.parametrize(("cls", "zero_snr"), [(EpsilonObjective, False), (VPredictionObjective, False),
                                               (VPredictionObjective, True)])
def test_debiased_estimation_matches_kohya(cls, zero_snr):
    k, t = random_steps()
    obj = cls(zero_terminal_snr=zero_snr, weighting=DebiasedEstimation())
    expected = kohya_apply_debiased_estimation(kohya_all_snr(zero_snr)[k], v_prediction=cls is VPredictionObjective)
    torch.testing.assert_close(obj.loss_weight(t), expected)


def test_debiased_estimation_refuses_what_it_cannot_weight():
    with pytest.raises(ConfigError, match="zero SNR"):
        EpsilonObjective(zero_terminal_snr=True, weighting=DebiasedEstimation())
    with pytest.raises(ConfigError, match="eps- and v-prediction"):
        FlowObjective(weighting=DebiasedEstimation())


@pytest.mark.parametrize("objective", [EpsilonObjective(), VPredictionObjective(zero_terminal_snr=True), FlowObjective()])
def test_min_snr_is_the_clean_image_weight_for_every_objective(objective):
    """Hang et al.: the x0-space loss weighted by min(snr, gamma). Any prediction error, mapped to x0 through the
    objective's own `to_x0`, must give the same weighted loss (where snr > 0)."""
    gamma = 5.0
    g = torch.Generator().manual_seed(0)
    t = objective.discretize(torch.rand(64, generator=g) * 0.99 + 0.005)
    x_t, pred = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    error = torch.randn(64, 8, generator=g)
    x0_error = objective.to_x0(x_t, pred + error, t) - objective.to_x0(x_t, pred, t)
    snr = objective.snr(t)
    x0_loss = torch.minimum(snr, torch.full_like(snr, gamma)) * x0_error.pow(2).mean(1)
    pred_loss = MinSNR(gamma)(t, objective) * error.pow(2).mean(1)
    torch.testing.assert_close(pred_loss, x0_loss, rtol=1e-4, atol=1e-6)


def test_flow_min_snr_closed_form():
    t = torch.linspace(0.01, 1.0, 100)
    snr = ((1 - t) / t) ** 2
    torch.testing.assert_close(MinSNR(5.0)(t, FlowObjective()), torch.minimum(snr, torch.tensor(5.0)) * t**2)


def test_weights_follow_the_rescaled_schedule():
    t = torch.tensor([0.5, 0.9])
    plain = VPredictionObjective(zero_terminal_snr=False, weighting=MinSNR(5.0)).loss_weight(t)
    rescaled = VPredictionObjective(zero_terminal_snr=True, weighting=MinSNR(5.0)).loss_weight(t)
    assert not torch.allclose(plain, rescaled)


def test_bad_weighting_settings_are_refused():
    with pytest.raises(ConfigError, match="gamma"):
        MinSNR(0.0)
    with pytest.raises(ConfigError, match="max_snr"):
        DebiasedEstimation(max_snr=-1)
