"""Noise tricks against kohya's sd-scripts (`custom_train_functions.py`, `train_util.get_noise_noisy_latents_and_timesteps`).

kohya draws from torch's global generator (and Python's `random` for the pyramid scale factors); with
generator=None ours draws from the same global stream in the same order, so seeding it makes both comparable.
"""

import random

import pytest
import torch
from diffusers import DDPMScheduler

from illustrious.errors import ConfigError
from illustrious.objectives import EpsilonObjective, GaussianNoise, VPredictionObjective


def kohya_apply_noise_offset(latents, noise, noise_offset, adaptive_noise_scale=None):
    if noise_offset is None:
        return noise
    noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), device=latents.device)
    return noise


def kohya_pyramid_noise_like(noise, device, iterations=6, discount=0.4):
    b, c, w, h = noise.shape
    u = torch.nn.Upsample(size=(w, h), mode="bilinear").to(device)
    for i in range(iterations):
        r = random.random() * 2 + 2
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        noise += u(torch.randn(b, c, wn, hn).to(device)) * discount**i
        if wn == 1 or hn == 1:
            break
    return noise / noise.std()


@pytest.fixture
def latents():
    return torch.randn(4, 4, 16, 12, generator=torch.Generator().manual_seed(0))


def test_default_noise_is_plain_gaussian(latents):
    torch.manual_seed(3)
    noise = GaussianNoise()(latents)
    torch.manual_seed(3)
    torch.testing.assert_close(noise, torch.randn_like(latents))
    assert GaussianNoise().perturb(noise) is noise


@pytest.mark.parametrize("random_strength", [False, True])
def test_noise_offset_matches_kohya(latents, random_strength):
    torch.manual_seed(5)
    ours = GaussianNoise(offset=0.1, offset_random_strength=random_strength)(latents)
    torch.manual_seed(5)
    noise = torch.randn_like(latents)
    offset = torch.rand(1) * 0.1 if random_strength else 0.1
    torch.testing.assert_close(ours, kohya_apply_noise_offset(latents, noise, offset))


def test_pyramid_noise_matches_kohya(latents, monkeypatch):
    monkeypatch.setattr(random, "random", lambda: float(torch.rand(1)))  # kohya's scale factors from torch's stream
    torch.manual_seed(7)
    ours = GaussianNoise(pyramid_iterations=6, pyramid_discount=0.3)(latents)
    torch.manual_seed(7)
    expected = kohya_pyramid_noise_like(torch.randn_like(latents), "cpu", iterations=6, discount=0.3)
    torch.testing.assert_close(ours, expected)
    assert abs(ours.std().item() - 1) < 1e-5


def test_offset_then_pyramid_in_kohyas_order(latents, monkeypatch):
    monkeypatch.setattr(random, "random", lambda: float(torch.rand(1)))
    torch.manual_seed(11)
    ours = GaussianNoise(offset=0.05, pyramid_iterations=3)(latents)
    torch.manual_seed(11)
    noise = kohya_apply_noise_offset(latents, torch.randn_like(latents), 0.05)
    torch.testing.assert_close(ours, kohya_pyramid_noise_like(noise, "cpu", iterations=3, discount=0.3))


@pytest.mark.parametrize("cls", [EpsilonObjective, VPredictionObjective])
def test_input_perturbation_noises_the_input_not_the_target(cls, latents):
    """kohya --ip_noise_gamma: add_noise(latents, noise + gamma * randn_like), target built from `noise`."""
    obj = cls(noise=GaussianNoise(input_perturbation=0.1))
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        rescale_betas_zero_snr=obj.zero_terminal_snr)
    k = torch.tensor([10, 300, 700, 999])
    t = k.float() / 1000
    torch.manual_seed(13)
    noise = obj.sample_noise(latents)
    x_t = obj.add_noise(latents, obj.input_noise(noise), t)
    target = obj.target(latents, noise, t)
    torch.manual_seed(13)
    ref_noise = torch.randn_like(latents)
    ref_x_t = ref.add_noise(latents, ref_noise + 0.1 * torch.randn_like(latents), k)
    torch.testing.assert_close(x_t, ref_x_t)
    expected = ref_noise if cls is EpsilonObjective else ref.get_velocity(latents, ref_noise, k)
    torch.testing.assert_close(target, expected)


def test_input_perturbation_random_strength_is_bounded(latents):
    noise = torch.zeros_like(latents)
    g = torch.Generator().manual_seed(0)
    extra = GaussianNoise(input_perturbation=0.2, input_perturbation_random_strength=True).perturb(noise, generator=g)
    g = torch.Generator().manual_seed(0)
    strength = torch.rand(1, generator=g).item() * 0.2
    torch.testing.assert_close(extra, strength * torch.randn(latents.shape, generator=g))


def test_bad_noise_settings_are_refused():
    with pytest.raises(ConfigError, match="objective.noise.offset"):
        GaussianNoise(offset=-0.1)
    with pytest.raises(ConfigError, match="pyramid_discount"):
        GaussianNoise(pyramid_discount=0.0)
    with pytest.raises(ValueError, match="pyramid_iterations"):
        GaussianNoise(pyramid_iterations=2)(torch.randn(2, 3, 8))
