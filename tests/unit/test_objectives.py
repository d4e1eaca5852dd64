"""Objectives against the references: diffusers' DDPMScheduler and the rectified-flow formulas."""

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from illustrious.objectives import EpsilonObjective, FlowObjective, VPredictionObjective
from illustrious.objectives.timesteps import LogitNormal, Uniform, shift_time

OBJECTIVES = {
    "eps": lambda: EpsilonObjective(),
    "vpred": lambda: VPredictionObjective(),
    "vpred_ztsnr": lambda: VPredictionObjective(zero_terminal_snr=True),
    "flow": lambda: FlowObjective(),
}


def grid_times(n=64, seed=0):
    k = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed))
    return k, k.float() / 1000


@pytest.mark.parametrize("zero_snr", [False, True])
def test_vp_add_noise_and_velocity_match_ddpm_scheduler(zero_snr):
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        rescale_betas_zero_snr=zero_snr)
    k, t = grid_times()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(64, 4, 8, 8, generator=g), torch.randn(64, 4, 8, 8, generator=g)
    eps, v = EpsilonObjective(zero_terminal_snr=zero_snr), VPredictionObjective(zero_terminal_snr=zero_snr)
    torch.testing.assert_close(eps.add_noise(x0, noise, t), ref.add_noise(x0, noise, k))
    torch.testing.assert_close(v.add_noise(x0, noise, t), ref.add_noise(x0, noise, k))
    torch.testing.assert_close(v.target(x0, noise, t), ref.get_velocity(x0, noise, k))
    torch.testing.assert_close(eps.target(x0, noise, t), noise)


def test_zero_terminal_snr_reaches_pure_noise():
    v = VPredictionObjective(zero_terminal_snr=True)
    alpha, sigma = v.alpha_sigma(torch.tensor([0.999]))
    assert alpha.item() == 0.0 and sigma.item() == 1.0
    alpha, _ = VPredictionObjective(zero_terminal_snr=False).alpha_sigma(torch.tensor([0.999]))
    assert alpha.item() > 0.05  # SDXL's own schedule never reaches pure noise


def test_flow_matches_diffusers_flow_match_scheduler():
    ref = FlowMatchEulerDiscreteScheduler()
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 4, 8, 8, generator=g)
    t = torch.rand(8, generator=g)
    flow = FlowObjective()
    # diffusers: scale_noise(sample, timestep, noise) = sigma * noise + (1 - sigma) * sample, timestep = 1000 sigma
    ref.set_timesteps(timesteps=(t * 1000).tolist())
    expected = torch.stack([ref.scale_noise(x0[i : i + 1], ref.timesteps[i : i + 1], noise[i : i + 1])[0] for i in range(8)])
    torch.testing.assert_close(flow.add_noise(x0, noise, ref.sigmas[:8]), expected)
    torch.testing.assert_close(flow.target(x0, noise, t), noise - x0)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_inverse_identities(name):
    obj = OBJECTIVES[name]()
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(32, 3, 4, 4, generator=g), torch.randn(32, 3, 4, 4, generator=g)
    t = obj.sample_t(32, generator=g)
    if name == "vpred_ztsnr":
        t[0] = 0.999  # zero SNR: v-prediction stays invertible there
    x_t = obj.add_noise(x0, noise, t)
    pred = obj.target(x0, noise, t)
    torch.testing.assert_close(obj.to_x0(x_t, pred, t), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(obj.to_eps(x_t, pred, t), noise, atol=1e-4, rtol=1e-4)


def test_eps_to_x0_refuses_zero_snr():
    obj = EpsilonObjective(zero_terminal_snr=True)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="zero SNR"):
        obj.to_x0(x, x, torch.tensor([0.999]))


def test_vp_times_are_on_the_training_grid_and_uniform():
    obj = EpsilonObjective()
    t = obj.sample_t(200_000, generator=torch.Generator().manual_seed(0))
    k = t * 1000
    torch.testing.assert_close(k, k.round())
    counts = torch.bincount(k.round().long(), minlength=1000).float()
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_timestep_samplers():
    g = torch.Generator().manual_seed(0)
    u = Uniform()(100_000, generator=g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01
    ln = LogitNormal(mean=0.5, std=1.0)(100_000, generator=g)
    z = torch.logit(ln)
    assert abs(z.mean() - 0.5) < 0.02 and abs(z.std() - 1.0) < 0.02
    t = torch.rand(100, generator=g)
    # SD3 eq.: t' = s t / (1 + (s - 1) t); shift 1 is the identity, endpoints stay put
    torch.testing.assert_close(shift_time(t, 1.0), t)
    torch.testing.assert_close(shift_time(torch.tensor([0.0, 1.0]), 3.0), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(shift_time(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
