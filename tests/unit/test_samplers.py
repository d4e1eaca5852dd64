"""Samplers against diffusers' schedulers stepping the same model, and on an analytic Gaussian case.

The model is the exact denoiser of Gaussian data x0 ~ N(mu, s^2) (per element), written in each objective's
own parameterization, so every scheduler sees the same deterministic predictions.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from illustrious.objectives import EpsilonObjective, FlowObjective, VPredictionObjective
from illustrious.sampling.samplers import (
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
)

SDXL = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing")
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction", "flow": "flow_prediction"}


class GaussianData:
    """x0 ~ N(mu, s^2) elementwise; E[x0 | x_t] in closed form."""

    def __init__(self, shape, s=0.5, seed=0):
        self.mu = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        self.s = s

    def posterior_mean(self, x, alpha, sigma):
        return self.mu + alpha * self.s**2 / (alpha**2 * self.s**2 + sigma**2) * (x - alpha * self.mu)

    def model(self, objective):
        """model(x_t, t) -> the objective's target for the exact clean estimate (and the noise it implies)."""

        def predict(x, t):
            t = torch.as_tensor(t, dtype=torch.float32).reshape(1)
            alpha, sigma = objective.alpha_sigma(t)
            x0 = self.posterior_mean(x, alpha, sigma)
            return objective.target(x0, (x - alpha * x0) / sigma, t.expand(x.shape[0]))

        return predict

    def denoiser(self, objective):
        model = self.model(objective)
        return lambda x, t: objective.to_x0(x, model(x, t), t.reshape(1).expand(x.shape[0]))


def vp_objective(prediction, zero_snr):
    cls = {"eps": EpsilonObjective, "v": VPredictionObjective}[prediction]
    return cls(zero_terminal_snr=zero_snr)


def mirror_diffusers_zero_snr(objective):
    """diffusers' Euler / DPM-Solver replace the terminal alpha_cumprod 0 by 2**-24 to keep sigma/alpha finite."""
    if objective.zero_terminal_snr:
        objective.alphas_cumprod[-1] = 2**-24
    return objective


def run_diffusers(scheduler, model, x, t_of=lambda k, i, s: float(k) / 1000, **step):
    """The standard diffusers denoising loop; model sees the VP x_t (scale_model_input) and our t."""
    for i, k in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, k) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(model(x_in, t_of(k, i, scheduler)), k, x, **step).prev_sample
    return x


def seeded(seed=5):
    return torch.Generator().manual_seed(seed)


VP_CASES = [("eps", False), ("v", False), ("v", True), ("eps", True)]


@pytest.mark.parametrize("steps", [1, 10, 28, 1000])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_vp_grid_is_diffusers_trailing(steps, zero_snr):
    obj = EpsilonObjective(zero_terminal_snr=zero_snr)
    times = obj.sampling_times(steps)
    assert len(times) == steps + 1 and times[-1] == 0
    for cls in (EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        ref = cls(**SDXL, rescale_betas_zero_snr=zero_snr)
        ref.set_timesteps(steps)
        torch.testing.assert_close(times[:-1], ref.timesteps.float() / 1000, rtol=0, atol=1e-7)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize(("prediction", "zero_snr"), VP_CASES[:3])
def test_euler_matches_euler_discrete_and_ddim(prediction, zero_snr, steps):
    data = GaussianData((2, 3, 4, 4))
    obj = vp_objective(prediction, zero_snr)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = sample_euler(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma)

    # DDIM (eta = 0, set_alpha_to_one: the last step returns x0); exact schedule, zero SNR included
    ddim = DDIMScheduler(**SDXL, prediction_type=PREDICTION_TYPE[prediction], rescale_betas_zero_snr=zero_snr,
                         set_alpha_to_one=True, clip_sample=False)
    ddim.set_timesteps(steps)
    torch.testing.assert_close(ours, run_diffusers(ddim, data.model(obj), noise.clone()), rtol=1e-5, atol=1e-5)

    # Euler in k-diffusion's VE form; started from the same x_T (diffusers' "trailing" init_noise_sigma is
    # sigma_max, i.e. a VP start of sqrt(1 - alpha_cumprod[-1]) * noise, not noise -- see README)
    mirrored = mirror_diffusers_zero_snr(vp_objective(prediction, zero_snr))
    ours = sample_euler(data.denoiser(mirrored), noise.clone(), mirrored.sampling_times(steps), mirrored.alpha_sigma)
    euler = EulerDiscreteScheduler(**SDXL, prediction_type=PREDICTION_TYPE[prediction], rescale_betas_zero_snr=zero_snr)
    euler.set_timesteps(steps)
    start = noise * (euler.sigmas.max() ** 2 + 1) ** 0.5
    torch.testing.assert_close(ours, run_diffusers(euler, data.model(mirrored), start), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 28])
@pytest.mark.parametrize(("prediction", "zero_snr"), VP_CASES[:3])
def test_dpmpp_2m_matches_dpm_solver_multistep(prediction, zero_snr, steps):
    data = GaussianData((2, 3, 4, 4))
    obj = mirror_diffusers_zero_snr(vp_objective(prediction, zero_snr))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = sample_dpmpp_2m(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma)
    ref = DPMSolverMultistepScheduler(**SDXL, prediction_type=PREDICTION_TYPE[prediction],
                                      rescale_betas_zero_snr=zero_snr, algorithm_type="dpmsolver++", solver_order=2)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours, run_diffusers(ref, data.model(obj), noise.clone()), rtol=1e-5, atol=1e-5)
    # second order is not first order: the comparison above can tell the two apart
    assert (ours - sample_euler(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma)).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_exact_zero_snr_differs_from_diffusers_only_by_its_clamp(sampler):
    """Our zero-terminal-SNR schedule is exact (alpha_T = 0); diffusers' Euler / DPM use alpha_T^2 = 2**-24."""
    data = GaussianData((2, 3, 4, 4))
    obj = VPredictionObjective(zero_terminal_snr=True)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = SAMPLERS[sampler](data.denoiser(obj), noise.clone(), obj.sampling_times(10), obj.alpha_sigma)
    ref = (EulerDiscreteScheduler if sampler == "euler" else DPMSolverMultistepScheduler)(
        **SDXL, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    ref.set_timesteps(10)
    x = run_diffusers(ref, data.model(obj), noise * (ref.sigmas.max() ** 2 + 1) ** 0.5 if sampler == "euler" else noise)
    assert (ours - x).abs().max() < 2e-3


@pytest.mark.parametrize("steps", [10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_flow_match_euler(shift, steps):
    data = GaussianData((2, 3, 4, 4))
    obj = FlowObjective()
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    times = obj.sampling_times(steps, shift=shift)
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))  # what the Flux / Lumina-2 / SD3 pipelines pass
    torch.testing.assert_close(times, ref.sigmas, rtol=0, atol=1e-6)
    ours = sample_euler(data.denoiser(obj), noise.clone(), times, obj.alpha_sigma)
    x = run_diffusers(ref, data.model(obj), noise.clone(), t_of=lambda k, i, s: s.sigmas[i])
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_dpmpp_2m_matches_dpm_solver_with_flow_sigmas(shift):
    data = GaussianData((2, 3, 4, 4))
    obj = FlowObjective()
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction",
                                      algorithm_type="dpmsolver++", solver_order=2)
    ref.set_timesteps(12)
    # diffusers' flow-sigma grid starts at shift(0.999), not 1; our sampler runs on any grid, so give it that one
    ours = sample_dpmpp_2m(data.denoiser(obj), noise.clone(), ref.sigmas.clone(), obj.alpha_sigma)
    x = run_diffusers(ref, data.model(obj), noise.clone(), t_of=lambda k, i, s: s.sigmas[i])
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


# -- stochastic samplers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize(("prediction", "zero_snr"), VP_CASES[:3])
def test_euler_ancestral_matches_euler_ancestral_discrete(prediction, zero_snr, steps):
    """Same model, same generator: diffusers steps in VE form (x / alpha), we in VP form; the draws coincide."""
    data = GaussianData((2, 3, 4, 4))
    obj = mirror_diffusers_zero_snr(vp_objective(prediction, zero_snr))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = sample_euler_ancestral(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma,
                                  generator=seeded())
    ref = EulerAncestralDiscreteScheduler(**SDXL, prediction_type=PREDICTION_TYPE[prediction],
                                          rescale_betas_zero_snr=zero_snr)
    ref.set_timesteps(steps)
    start = noise * (ref.sigmas.max() ** 2 + 1) ** 0.5  # diffusers' init_noise_sigma: the same VP x_T
    x = run_diffusers(ref, data.model(obj), start, generator=seeded())
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    # the noise matters: another seed gives another sample, and the deterministic Euler differs too
    other = sample_euler_ancestral(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma,
                                   generator=seeded(6))
    assert (ours - other).abs().max() > 1e-2
    assert (ours - sample_euler(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma)).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [10, 28])
@pytest.mark.parametrize(("prediction", "zero_snr"), VP_CASES[:3])
def test_dpmpp_2m_sde_matches_sde_dpm_solver_multistep(prediction, zero_snr, steps):
    data = GaussianData((2, 3, 4, 4))
    obj = mirror_diffusers_zero_snr(vp_objective(prediction, zero_snr))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = sample_dpmpp_2m_sde(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma,
                               generator=seeded())
    ref = DPMSolverMultistepScheduler(**SDXL, prediction_type=PREDICTION_TYPE[prediction],
                                      rescale_betas_zero_snr=zero_snr, algorithm_type="sde-dpmsolver++", solver_order=2)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours, run_diffusers(ref, data.model(obj), noise.clone(), generator=seeded()),
                               rtol=1e-5, atol=1e-5)
    assert (ours - sample_dpmpp_2m(data.denoiser(obj), noise.clone(), obj.sampling_times(steps), obj.alpha_sigma)).abs().max() > 1e-2


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_dpmpp_2m_sde_matches_sde_dpm_solver_with_flow_sigmas(shift):
    data = GaussianData((2, 3, 4, 4))
    obj = FlowObjective()
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction",
                                      algorithm_type="sde-dpmsolver++", solver_order=2)
    ref.set_timesteps(12)
    ours = sample_dpmpp_2m_sde(data.denoiser(obj), noise.clone(), ref.sigmas.clone(), obj.alpha_sigma,
                               generator=seeded())
    x = run_diffusers(ref, data.model(obj), noise.clone(), t_of=lambda k, i, s: s.sigmas[i], generator=seeded())
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def ddpm_posterior(a_t, b_t, a_s, b_s, x_t, x0):
    """Mean and std of q(x_s | x_t, x0) for x_u = a_u x0 + b_u eps (Ho et al. 2020, eq. 6-7, for any a, b):
    the process from s to t multiplies by a_t / a_s and adds variance b_t^2 - (a_t / a_s)^2 b_s^2."""
    a_ts = a_t / a_s
    var_ts = b_t**2 - a_ts**2 * b_s**2
    mean = (a_ts * b_s**2 / b_t**2) * x_t + (a_s * var_ts / b_t**2) * x0
    return mean, (var_ts * b_s**2 / b_t**2) ** 0.5


@pytest.mark.parametrize(("t", "s"), [(1.0, 0.8), (0.7, 0.4), (0.3, 0.05)])
def test_flow_euler_ancestral_is_the_gaussian_posterior(t, s):
    """diffusers has no flow Euler ancestral: one step against the analytic posterior, with the same draw z."""
    data = GaussianData((2, 3, 4, 4))
    obj = FlowObjective()
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    times = torch.tensor([t, s, 0.0])
    seen = []
    step = sample_euler_ancestral(lambda x, tt: seen.append(x) or data.denoiser(obj)(x, tt), x_t.clone(), times,
                                  obj.alpha_sigma, generator=seeded())
    x_s = seen[1]  # what the sampler handed the denoiser at s
    x0 = data.denoiser(obj)(x_t, torch.tensor(t))
    z = torch.randn(x_t.shape, generator=seeded())
    mean, std = ddpm_posterior(1 - t, t, 1 - s, s, x_t, x0)
    torch.testing.assert_close(x_s, mean + std * z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, data.denoiser(obj)(x_s, torch.tensor(s)))


@pytest.mark.parametrize("sampler", sorted(STOCHASTIC_SAMPLERS))
def test_stochastic_samplers_are_reproducible_and_per_image(sampler):
    """The same seed gives the same samples; with one generator per image, an image does not depend on its batch."""
    data = GaussianData((3, 4, 4))
    obj = FlowObjective()
    noise = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    times = obj.sampling_times(8)
    run = lambda x, gen: SAMPLERS[sampler](data.denoiser(obj), x.clone(), times, obj.alpha_sigma, generator=gen)  # noqa: E731
    torch.testing.assert_close(run(noise, seeded(3)), run(noise, seeded(3)), rtol=0, atol=0)
    batch = run(noise, [seeded(10 + i) for i in range(3)])
    alone = run(noise[2:], [seeded(12)])
    torch.testing.assert_close(batch[2:], alone, rtol=1e-6, atol=1e-6)
    assert (batch[:1] - run(noise[:1], [seeded(99)])).abs().max() > 1e-2
    with pytest.raises(ValueError, match="one per image"):
        run(noise, [seeded(1)])


OBJECTIVES = {
    "eps": lambda: EpsilonObjective(),
    "vpred_ztsnr": lambda: VPredictionObjective(zero_terminal_snr=True),
    "flow": lambda: FlowObjective(),
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_recovers_gaussian_data_mean_and_variance(name, sampler):
    """Exact denoiser of N(mu, s^2) data, sampled from pure noise: samples with mean mu and the right std.

    For Gaussian data every step is affine in x, so with noise whitened to exact unit moments the output moments
    carry no Monte-Carlo error, only the sampler's. The last step returns E[x0 | x_t] at the last grid time t,
    whose std is s * alpha s / sqrt(alpha^2 s^2 + sigma^2) (< s; diffusers samplers end the same way).
    """
    obj = OBJECTIVES[name]()
    s = 0.5
    data = GaussianData((3,), s=s)
    data.mu = torch.tensor([1.5, -0.5, 0.0])
    stochastic = sampler in STOCHASTIC_SAMPLERS
    noise = torch.randn(20000 if stochastic else 1000, 3, generator=torch.Generator().manual_seed(0))
    noise = (noise - noise.mean(0)) / noise.std(0)
    # the ancestral step ignores Var[x0 | x_t] within a step: its std error falls as 1/steps (-0.03 at 50 steps,
    # -0.008 at 200, -0.002 at 800 for flow), so the stochastic samplers run 200 steps here
    times = obj.sampling_times(200 if stochastic else 50)
    extra = {"generator": seeded()} if stochastic else {}
    x = SAMPLERS[sampler](data.denoiser(obj), noise, times, obj.alpha_sigma, **extra)
    alpha, sigma = obj.alpha_sigma(times[-2:-1])
    expected_std = s * alpha * s / (alpha**2 * s**2 + sigma**2).sqrt()
    # eps on SDXL's schedule starts where alpha_T = 0.068, not at zero SNR: pure noise misses alpha_T * mu
    # the stochastic samplers' noise leaves Monte-Carlo error: about s / sqrt(20000) = 0.0035 on the mean
    mean_tol = 0.06 if name == "eps" else 0.015 if stochastic else 1e-4
    std_tol = 0.02 if sampler in ("euler", "ddim") or stochastic else 0.005  # first vs second order; noise
    torch.testing.assert_close(x.mean(0), data.mu, rtol=0, atol=mean_tol)
    torch.testing.assert_close(x.std(0), expected_std.expand(3), rtol=0, atol=std_tol)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_one_step_returns_the_first_clean_estimate(sampler):
    data = GaussianData((2, 4))
    obj = FlowObjective()
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    seen = []
    extra = {"generator": seeded()} if sampler in STOCHASTIC_SAMPLERS else {}
    x = SAMPLERS[sampler](data.denoiser(obj), noise, obj.sampling_times(1), obj.alpha_sigma, callback=seen.append,
                          **extra)
    torch.testing.assert_close(x, data.denoiser(obj)(noise, torch.tensor(1.0)))
    assert [d["i"] for d in seen] == [0] and torch.equal(seen[0]["denoised"], x)


def test_callback_sees_every_step():
    data = GaussianData((2, 4))
    obj = VPredictionObjective(zero_terminal_snr=True)
    seen = []
    sample_dpmpp_2m(data.denoiser(obj), torch.randn(2, 4), obj.sampling_times(7), obj.alpha_sigma, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(7))
    assert all(d["denoised"].shape == (2, 4) for d in seen)


# -- diagnostics along a trajectory ------------------------------------------------------------------------------
def test_low_frequency_energy_and_mean_colour():
    from illustrious.eval.trajectory import low_frequency_energy, luminance, mean_colour

    i = torch.arange(32, dtype=torch.float32)
    wave = 0.25 * torch.cos(2 * torch.pi * 2 * i / 32)[:, None].expand(32, 32)  # 2 cycles per image, in [0, 1] units
    checker = 0.25 * (-1.0) ** (i[:, None] + i[None, :])  # Nyquist
    to_pixels = lambda x01: (x01 * 2 - 1).expand(1, 3, 32, 32)  # noqa: E731
    torch.testing.assert_close(low_frequency_energy(to_pixels(0.5 + wave)), torch.tensor([0.25**2 / 2]))
    torch.testing.assert_close(low_frequency_energy(to_pixels(0.5 + checker)), torch.zeros(1), atol=1e-9, rtol=0)
    torch.testing.assert_close(low_frequency_energy(to_pixels(torch.full((32, 32), 0.9))), torch.zeros(1), atol=1e-9, rtol=0)
    red = torch.stack([torch.ones(8, 8), -torch.ones(8, 8), -torch.ones(8, 8)])[None]
    torch.testing.assert_close(mean_colour(red), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(luminance(red), torch.tensor([0.2126]))


def test_trajectory_recorder_keeps_every_step_of_every_batch():
    from illustrious.eval.trajectory import TrajectoryRecorder, trajectory_metrics

    obj = FlowObjective()
    data = GaussianData((3, 4, 4))
    recorder = TrajectoryRecorder(decode=lambda x: x.clamp(-1, 1))
    times = obj.sampling_times(5)
    for start in (0, 2):  # two batches, as generate() runs them, with "start" added
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(start))
        sample_euler(data.denoiser(obj), x, times, obj.alpha_sigma,
                     callback=lambda info, start=start: recorder({**info, "start": start}))
    pixels = recorder.pixels()
    assert pixels.shape == (5, 4, 3, 4, 4)
    assert recorder.times == times[:-1].tolist()
    metrics = trajectory_metrics(recorder)
    assert len(metrics["mean_colour"]) == 5 and len(metrics["mean_colour"][0]) == 4
    # the last recorded estimate is what the sampler returned for the second batch
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(pixels[-1, 2:], sample_euler(data.denoiser(obj), x, times, obj.alpha_sigma).clamp(-1, 1))


class TinyBackbone(torch.nn.Module):
    """Just enough of a Backbone for generate(): identity autoencoder, a linear 'denoiser', empty prompts."""

    latent_channels, pixel_multiple = 2, 1

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.autoencoder = type("AE", (), {"spatial_factor": 1})()

    def encode_text(self, prompts):
        from illustrious.backbones.base import Conditioning

        return Conditioning(tokens=torch.zeros(len(prompts), 1, 1), mask=None, pooled=None)

    def forward(self, x, t, cond, extras):
        return self.scale * x

    def decode(self, latents):
        return torch.cat([latents, latents[:, :1]], dim=1)


@pytest.mark.parametrize("sampler", sorted(STOCHASTIC_SAMPLERS))
def test_generate_with_a_stochastic_sampler_is_seeded_per_image(sampler):
    from illustrious.sampling.generate import generate

    backbone, obj = TinyBackbone(), FlowObjective()
    run = lambda prompts, seed, **kw: generate(backbone, obj, prompts, height=4, width=4, steps=6, guidance_scale=1.0,  # noqa: E731
                                               sampler=sampler, seed=seed, **kw)
    both = run(["a", "b"], seed=3)
    torch.testing.assert_close(both, run(["a", "b"], seed=3), rtol=0, atol=0)
    torch.testing.assert_close(both[1:], run(["b"], seed=4), rtol=1e-6, atol=1e-6)  # image 1 = seed 3 + 1 alone
    torch.testing.assert_close(both[1:], run(["a", "b"], seed=3, batch_size=1)[1:], rtol=1e-6, atol=1e-6)
    assert (both - run(["a", "b"], seed=5)).abs().max() > 1e-3
    # the step noise matters: the deterministic Euler from the same initial noise differs
    euler = generate(backbone, obj, ["a", "b"], height=4, width=4, steps=6, guidance_scale=1.0, sampler="euler", seed=3)
    assert (both - euler).abs().max() > 1e-3
