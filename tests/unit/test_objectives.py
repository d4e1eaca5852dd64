"""Objectives against the references: diffusers' DDPMScheduler and the rectified-flow formulas."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from illustrious.objectives import EpsilonObjective, FlowObjective, FlowXPrediction, VPredictionObjective
from illustrious.objectives.timesteps import LogitNormal, Uniform, shift_time

OBJECTIVES = {
    "eps": lambda: EpsilonObjective(),
    "vpred": lambda: VPredictionObjective(),
    "vpred_ztsnr": lambda: VPredictionObjective(zero_terminal_snr=True),
    "flow": lambda: FlowObjective(),
    "flow_x0": lambda: FlowXPrediction(),
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


# -- timestep sampling ------------------------------------------------------------------------------------------
from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # noqa: E402
from diffusers.training_utils import compute_density_for_timestep_sampling  # noqa: E402

from illustrious.errors import ConfigError  # noqa: E402
from illustrious.objectives.timesteps import (  # noqa: E402
    BiasedUniform,
    ModeSampling,
    resolution_mu,
    resolution_shift_time,
)


@pytest.mark.parametrize("shift", [None, 3.0])
def test_logit_normal_is_sd3s_density(shift):
    """diffusers' SD3 / Flux training scripts draw u = sigmoid(N(mean, std)); then the SD3 shift."""
    u = compute_density_for_timestep_sampling("logit_normal", 64, logit_mean=0.3, logit_std=1.2,
                                              generator=torch.Generator().manual_seed(0))
    t = LogitNormal(mean=0.3, std=1.2, shift=shift)(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, u if shift is None else shift * u / (1 + (shift - 1) * u))


def test_mode_is_sd3s_mode_density():
    """diffusers' SD3 training scripts' weighting_scheme="mode": u ~ U, t = 1 - u - s (cos^2(pi u / 2) - 1 + u)."""
    u = compute_density_for_timestep_sampling("mode", 64, mode_scale=1.29, generator=torch.Generator().manual_seed(0))
    t = ModeSampling(scale=1.29)(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, u)


def test_mode_keeps_density_at_the_ends_and_peaks_in_the_middle():
    """Density 1 / (1 + s) at t = 0 and t = 1 (the logit-normal's vanishes there), and above 1 in the middle."""
    t = ModeSampling(scale=1.29)(400_000, generator=torch.Generator().manual_seed(0))
    hist = torch.histc(t, bins=20, min=0, max=1) / len(t) * 20
    torch.testing.assert_close(hist[[0, -1]], torch.full((2,), 1 / 2.29), atol=0.03, rtol=0)
    assert hist[9] > 2.5 and hist[10] > 2.5  # the exact density is 1 / (1 + s - s pi / 2) = 3.8 at t = 0.5
    with pytest.raises(ConfigError, match="objective.timesteps.scale"):
        ModeSampling(scale=2.0)


def test_uniform_fraction_mixes_the_density_with_uniform():
    """p = 0 leaves the random stream untouched; p > 0 takes each draw from U[0, 1) with probability p, so the
    mixture's density is (1 - p) f + p: above t = 0.9 the logit-normal has 1.4 %, the 25 % mixture 3.5 %."""
    plain = LogitNormal()(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(LogitNormal(uniform_fraction=0.0)(64, generator=torch.Generator().manual_seed(0)), plain)
    n = 400_000
    mixed = LogitNormal(uniform_fraction=0.25)(n, generator=torch.Generator().manual_seed(0))
    base = LogitNormal()(n, generator=torch.Generator().manual_seed(1))
    tail = lambda t: float((t > 0.9).float().mean())  # noqa: E731
    assert tail(base) == pytest.approx(0.0141, abs=0.001)  # 1 - Phi(logit(0.9)) = 1 - Phi(2.197)
    assert tail(mixed) == pytest.approx(0.75 * 0.0141 + 0.25 * 0.1, abs=0.001)
    assert float(mixed.mean()) == pytest.approx(0.5, abs=0.003)
    everything = LogitNormal(uniform_fraction=1.0)(n, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(torch.histc(everything, bins=10, min=0, max=1) / n, torch.full((10,), 0.1),
                               atol=0.003, rtol=0)
    with pytest.raises(ConfigError, match="uniform_fraction"):
        LogitNormal(uniform_fraction=1.5)


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_fixed_shift_is_flow_match_schedulers(shift):
    sigmas = torch.linspace(1, 0.01, 50)
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(sigmas=sigmas.numpy())
    torch.testing.assert_close(shift_time(sigmas, shift), ref.sigmas[:-1])


@pytest.mark.parametrize("seq_len", [64, 256, 1024, 4096, 8192])
def test_resolution_shift_is_flux_and_lumina(seq_len):
    """mu from diffusers' `calculate_shift` (Flux; Lumina-2 transport's get_lin_function), applied as
    FlowMatchEulerDiscreteScheduler's dynamic `time_shift(mu, 1, t)`."""
    assert resolution_mu(seq_len) == pytest.approx(calculate_shift(seq_len))
    u = torch.rand(32, generator=torch.Generator().manual_seed(seq_len))
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ref.set_timesteps(sigmas=u.numpy(), mu=calculate_shift(seq_len))
    torch.testing.assert_close(resolution_shift_time(u, seq_len), ref.sigmas[:-1])
    sampler = Uniform(resolution_shift=True)
    t = sampler(32, generator=torch.Generator().manual_seed(seq_len), image_seq_len=seq_len)
    torch.testing.assert_close(t, resolution_shift_time(u, seq_len))


def test_resolution_shift_uses_the_backbones_token_count():
    obj = FlowObjective(timesteps=LogitNormal(resolution_shift=True))
    small = obj.sample_t(20_000, generator=torch.Generator().manual_seed(0), image_seq_len=256)
    large = obj.sample_t(20_000, generator=torch.Generator().manual_seed(0), image_seq_len=4096)
    assert (large > small).all()  # more tokens, more noise
    with pytest.raises(ValueError, match="image_seq_len"):
        obj.sample_t(4)


def test_restricted_range_is_kohyas_min_max_timestep():
    """t_min=0.2, t_max=0.8 on the 1000-step grid is kohya's randint(200, 800): k uniform on 200..799."""
    obj = EpsilonObjective(timesteps=Uniform(t_min=0.2, t_max=0.8))
    k = (obj.sample_t(300_000, generator=torch.Generator().manual_seed(0)) * 1000).round().long()
    assert k.min() == 200 and k.max() == 799
    counts = torch.bincount(k - 200, minlength=600).float()
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.25 * counts.mean()


def diffusers_timestep_bias_weights(strategy, multiplier, portion=0.25, begin=0, end=1000, num_timesteps=1000):
    """`generate_timestep_weights` from diffusers' SDXL training scripts (SimpleTuner's --timestep_bias_*)."""
    weights = torch.ones(num_timesteps)
    num_to_bias = int(portion * num_timesteps)
    bias_indices = {"later": slice(-num_to_bias, None), "earlier": slice(0, num_to_bias),
                    "range": slice(begin, end)}[strategy]
    weights[bias_indices] *= multiplier
    return weights / weights.sum()


@pytest.mark.parametrize(("strategy", "multiplier", "begin", "end"),
                         [("later", 3.0, 0.75, 1.0), ("earlier", 2.0, 0.0, 0.25), ("range", 0.5, 0.2, 0.6)])
def test_biased_density_is_diffusers_timestep_bias(strategy, multiplier, begin, end):
    expected = diffusers_timestep_bias_weights(strategy, multiplier, begin=int(begin * 1000), end=int(end * 1000))
    obj = VPredictionObjective(timesteps=BiasedUniform(multiplier=multiplier, begin=begin, end=end))
    k = (obj.sample_t(400_000, generator=torch.Generator().manual_seed(0)) * 1000).round().long()
    observed = torch.bincount(k, minlength=1000).float() / len(k)
    window = torch.zeros(1000, dtype=torch.bool)
    window[int(begin * 1000) : int(end * 1000)] = True
    # the window's probability mass, and per-step probabilities constant inside and outside it
    assert observed[window].sum().item() == pytest.approx(expected[window].sum().item(), abs=0.004)
    for region in (window, ~window):
        assert expected[region].std() < 1e-8
        assert observed[region].mean().item() == pytest.approx(expected[region][0].item(), rel=0.01)
        assert (observed[region] - expected[region]).abs().max() < 0.25 * expected[region][0]


def test_bad_timestep_settings_are_refused():
    with pytest.raises(ConfigError, match="shift"):
        Uniform(shift=0.0)
    with pytest.raises(ConfigError, match="resolution_shift"):
        Uniform(shift=3.0, resolution_shift=True)
    with pytest.raises(ConfigError, match="t_min"):
        Uniform(t_min=0.5, t_max=0.5)
    with pytest.raises(ConfigError, match="begin"):
        BiasedUniform(begin=0.8, end=0.2)
    with pytest.raises(ConfigError, match="multiplier"):
        BiasedUniform(multiplier=0.0)
    with pytest.raises(ValueError, match="sampling.shift"):
        EpsilonObjective().sampling_times(10, shift=3.0)
    with pytest.raises(ValueError, match="sampling.steps"):
        EpsilonObjective().sampling_times(1001)


# -- the contract, for every objective --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_sample_t_contract(name):
    obj = OBJECTIVES[name]()
    t = obj.sample_t(1000, generator=torch.Generator().manual_seed(0), image_seq_len=256)
    assert t.shape == (1000,) and t.dtype == torch.float32
    assert 0 <= t.min() and t.max() <= 1
    torch.testing.assert_close(obj.discretize(t), t)  # already on the training grid
    again = obj.sample_t(1000, generator=torch.Generator().manual_seed(0), image_seq_len=256)
    assert torch.equal(t, again)  # seeded


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_eps_scale_is_how_a_prediction_error_moves_the_noise(name):
    obj = OBJECTIVES[name]()
    g = torch.Generator().manual_seed(0)
    t = obj.sample_t(16, generator=g)
    x_t, pred, err = (torch.randn(16, 5, generator=g) for _ in range(3))
    moved = obj.to_eps(x_t, pred + err, t) - obj.to_eps(x_t, pred, t)
    # eps_scale is |d eps / d prediction|; x0-prediction moves the noise against the error (eps = (x_t - (1 - t) x0) / t)
    sign = -1 if name == "flow_x0" else 1
    torch.testing.assert_close(moved, sign * obj.eps_scale(t)[:, None] * err, rtol=1e-5, atol=1e-5)
    alpha, _ = obj.alpha_sigma(t)
    expected = {"eps": torch.ones_like(t), "vpred": alpha, "vpred_ztsnr": alpha, "flow": 1 - t,
                "flow_x0": (1 - t) / t}[name]
    torch.testing.assert_close(obj.eps_scale(t), expected)


# -- flow with x0-prediction (JiT) ---------------------------------------------------------------------------
def test_flow_x0_is_flow_with_the_clean_image_as_output():
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 4, 4, generator=g)
    t = torch.rand(16, generator=g)
    flow, x_pred = FlowObjective(), FlowXPrediction()
    torch.testing.assert_close(x_pred.add_noise(x0, noise, t), flow.add_noise(x0, noise, t))
    torch.testing.assert_close(x_pred.target(x0, noise, t), x0)
    torch.testing.assert_close(x_pred.sampling_times(20, shift=3.0), flow.sampling_times(20, shift=3.0))
    # the same clean estimate, read from either output: a velocity v and the x0 it implies, x_t - t v
    x_t, v = flow.add_noise(x0, noise, t), torch.randn(16, 3, 4, 4, generator=g)
    x0_of_v = flow.to_x0(x_t, v, t)
    torch.testing.assert_close(x_pred.to_x0(x_t, x0_of_v, t), x0_of_v)
    torch.testing.assert_close(x_pred.to_eps(x_t, x0_of_v, t), flow.to_eps(x_t, v, t), atol=1e-4, rtol=1e-4)


def test_velocity_weighting_is_jits_v_loss():
    from illustrious.objectives.weighting import VelocityLoss

    g = torch.Generator().manual_seed(5)
    x0, noise, x0_hat = (torch.randn(64, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.rand(64, generator=g) * 0.95 + 0.05  # above JiT's floor
    x_pred = FlowXPrediction(weighting=VelocityLoss())
    x_t = x_pred.add_noise(x0, noise, t)
    # JiT (Li & He 2025, algorithm 1): v_pred = (z - x_pred) / (1 - t_jit), v = (z - x) / (1 - t_jit), loss
    # |v - v_pred|^2, with t_jit = 1 - t here (its time runs from noise at 0 to clean at 1)
    v_hat, v = (x_t - x0_hat) / t[:, None, None, None], (x_t - x0) / t[:, None, None, None]
    jit = (v - v_hat).pow(2).flatten(1).mean(1)
    ours = (x0_hat - x0).pow(2).flatten(1).mean(1) * x_pred.loss_weight(t)
    torch.testing.assert_close(ours, jit, rtol=1e-4, atol=1e-5)
    # below the floor the divisor is the floor: JiT's clip of (1 - t_jit) at 0.05
    small = torch.tensor([0.0, 0.01, 0.05, 0.5])
    torch.testing.assert_close(x_pred.loss_weight(small), 1 / small.clamp(min=0.05) ** 2)
    # flow's target already is the velocity: weight 1
    torch.testing.assert_close(FlowObjective(weighting=VelocityLoss()).loss_weight(t), torch.ones(64))


def test_velocity_weighting_refuses_non_flow_objectives_and_bad_floors():
    from illustrious.errors import ConfigError
    from illustrious.objectives.weighting import VelocityLoss

    with pytest.raises(ConfigError, match="not a flow objective"):
        EpsilonObjective(weighting=VelocityLoss())
    with pytest.raises(ConfigError, match="t_floor"):
        VelocityLoss(t_floor=0.0)


def test_min_snr_on_flow_x0_is_the_papers_x0_form():
    from illustrious.objectives.weighting import MinSNR

    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    snr = ((1 - t) / t) ** 2
    torch.testing.assert_close(FlowXPrediction(weighting=MinSNR(5.0)).loss_weight(t), snr.clamp(max=5.0))


def test_flow_x0_config_is_jits_recipe(make_config):
    from illustrious.config import instantiate
    from illustrious.objectives.weighting import VelocityLoss

    obj = instantiate(make_config("objective=flow_x0").objective)
    assert isinstance(obj, FlowXPrediction) and isinstance(obj.weighting, VelocityLoss) and obj.weighting.t_floor == 0.05
    assert isinstance(obj.timesteps, LogitNormal) and (obj.timesteps.mean, obj.timesteps.std) == (0.8, 0.8)
    # JiT's P_mean = -0.8 in its clean-at-1 time is +0.8 here: the median draw is sigmoid(0.8)
    t = obj.sample_t(20001, generator=torch.Generator().manual_seed(0))
    assert abs(t.median().item() - torch.sigmoid(torch.tensor(0.8)).item()) < 0.01


def test_objective_configs_compose_and_switch(make_config):
    from illustrious.config import instantiate

    cfg = make_config("objective=vpred", "objective/timesteps=biased", "objective.timesteps.begin=0.75",
                      "objective/weighting=min_snr", "objective.weighting.gamma=3",
                      "objective.noise.offset=0.05", "objective.noise.input_perturbation=0.1")
    obj = instantiate(cfg.objective)
    assert isinstance(obj, VPredictionObjective) and obj.zero_terminal_snr
    assert isinstance(obj.timesteps, BiasedUniform) and obj.timesteps.begin == 0.75
    assert obj.weighting.gamma == 3 and obj.noise.offset == 0.05 and obj.noise.input_perturbation == 0.1
    flow = instantiate(make_config("objective=flow", "objective/timesteps=uniform", "objective.timesteps.shift=3").objective)
    assert isinstance(flow.timesteps, Uniform) and flow.timesteps.shift == 3
    eps = instantiate(make_config("objective=eps", "objective/weighting=debiased").objective)
    assert eps.weighting is not None and eps.timesteps.shift is None


def test_the_late_tail_draws_from_the_top_of_the_range_once_its_fraction_of_training_has_passed():
    n = 200_000
    sampler = LogitNormal(tail_fraction=0.3, tail_min=0.85, tail_after=0.5)
    plain = LogitNormal()(n, generator=torch.Generator().manual_seed(0))
    # before tail_after: the density alone, with its random stream untouched
    early = sampler(n, generator=torch.Generator().manual_seed(0), progress=0.499)
    torch.testing.assert_close(early, plain)
    late = sampler(n, generator=torch.Generator().manual_seed(0), progress=0.5)
    def above(t):  # the logit-normal(0, 1)'s own share of draws above t
        return 0.5 * math.erfc(math.log(t / (1 - t)) / math.sqrt(2))

    # each draw comes from U[0.85, 1) with probability 0.3, else from the density
    assert abs((late >= 0.85).float().mean().item() - (0.3 + 0.7 * above(0.85))) < 0.004
    assert abs((late >= 0.925).float().mean().item() - (0.15 + 0.7 * above(0.925))) < 0.004
    # below 0.85 the density keeps its shape, scaled by 0.7
    assert abs((late < 0.5).float().mean().item() - 0.7 * 0.5) < 0.004
    # a window: drawn in [tail_after, tail_until) of training only
    window = LogitNormal(tail_fraction=1.0, tail_min=0.9, tail_after=0.5, tail_until=0.8)
    assert (window(1000, progress=0.79) >= 0.9).all()
    torch.testing.assert_close(window(64, generator=torch.Generator().manual_seed(3), progress=0.8),
                               LogitNormal()(64, generator=torch.Generator().manual_seed(3)))
    # from the start when tail_after = 0, and nothing without a share
    assert (LogitNormal(tail_fraction=1.0, tail_min=0.9)(1000, generator=torch.Generator().manual_seed(1)) >= 0.9).all()
    # a window without a known progress (a bare call, outside a Trainer) draws no tail
    torch.testing.assert_close(sampler(64, generator=torch.Generator().manual_seed(4)),
                               LogitNormal()(64, generator=torch.Generator().manual_seed(4)))
    for bad in ({"tail_fraction": 1.5}, {"tail_min": 1.0}, {"tail_after": 1.0}, {"tail_until": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            LogitNormal(**bad)


def test_the_training_step_passes_the_fraction_of_its_steps_done():
    from types import SimpleNamespace

    from illustrious.module import DiffusionModule

    def progress(**trainer):
        return DiffusionModule.training_progress(SimpleNamespace(_trainer=SimpleNamespace(**trainer) if trainer else None))

    # estimated_stepping_batches is Lightning's total: max_steps, or what max_epochs comes to
    assert progress(global_step=300, estimated_stepping_batches=600) == 0.5
    assert progress(global_step=0, estimated_stepping_batches=600) == 0.0
    assert progress(global_step=7, estimated_stepping_batches=float("inf")) is None  # no end: no fraction
    assert progress(global_step=7, estimated_stepping_batches=-1) is None  # an iterable dataset, no max_steps
    assert progress() is None  # outside a Trainer


def test_the_training_step_hands_its_progress_to_the_timestep_sampler(make_config):
    from types import SimpleNamespace

    from illustrious.config import instantiate
    from illustrious.train import build_module

    module = build_module(make_config(), instantiate(make_config().backbone))  # the default run: tail from half-way
    module.log = lambda *a, **k: None
    seen = []
    sample_t = module.objective.sample_t
    module.objective.sample_t = lambda *a, **k: seen.append(k["progress"]) or sample_t(*a, **k)
    batch = {"pixels": torch.rand(64, 3, 32, 32) * 2 - 1, "captions": ["a red circle on the left"] * 64}
    for step in (299, 300):
        module._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=600)
        torch.manual_seed(0)
        module.training_step(batch, 0)
        assert seen[-1] == step / 600
    # the recipe's tail: half of the draws at t >= 0.85 once half of training is done
    module._trainer = SimpleNamespace(global_step=300, estimated_stepping_batches=600)
    t = module.objective.sample_t(4000, progress=module.training_progress(), generator=torch.Generator().manual_seed(0))
    assert abs((t >= 0.85).float().mean().item() - (0.5 + 0.5 * 0.5 * math.erfc(math.log(0.85 / 0.15) / math.sqrt(2)))) < 0.03
