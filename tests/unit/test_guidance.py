"""Classifier-free guidance against diffusers' own pipelines, run with tiny random models.

Lumina2Pipeline (CFG truncation + renormalisation, flow) and StableDiffusionXLPipeline (guidance rescale,
zero-terminal-SNR v-prediction) are stepped on the same latents and text embeddings as our denoiser + sampler,
through our real backbone adapters.
"""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

from illustrious.backbones.base import Conditioning
from illustrious.backbones.lumina import LuminaBackbone
from illustrious.backbones.pixel_autoencoder import PixelAutoencoder
from illustrious.backbones.sdxl import SDXLBackbone
from illustrious.objectives import EpsilonObjective, FlowObjective, VPredictionObjective
from illustrious.sampling.guidance import cfg_denoiser, cfg_truncation
from illustrious.sampling.samplers import sample_euler

OBJECTIVES = {
    "eps": lambda: EpsilonObjective(),
    "vpred_ztsnr": lambda: VPredictionObjective(zero_terminal_snr=True),
    "flow": lambda: FlowObjective(),
}


def tiny_lumina():
    torch.manual_seed(0)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=12, hidden_size=32, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(32, 16, 16),
        cap_feat_dim=16).eval()
    return transformer, LuminaBackbone(transformer, torch.nn.Identity(), PixelAutoencoder(factor=2)).eval()


@pytest.mark.parametrize(("trunc_ratio", "renorm"), [(0.5, True), (1.0, True), (0.3, False)])
def test_lumina_truncation_and_renorm_match_lumina2_pipeline(trunc_ratio, renorm):
    transformer, backbone = tiny_lumina()
    steps, shift, scale = 8, 3.0, 4.0
    g = torch.Generator().manual_seed(1)
    embeds, neg_embeds = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    neg_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    latents = torch.randn(2, 12, 8, 8, generator=g)

    pipe = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                           vae=None, text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg_embeds,
                    negative_prompt_attention_mask=neg_mask, latents=latents.clone(), height=64, width=64,
                    num_inference_steps=steps, guidance_scale=scale, cfg_trunc_ratio=trunc_ratio,
                    cfg_normalization=renorm, output_type="latent").images

    obj = FlowObjective()
    times = obj.sampling_times(steps, shift=shift)
    unguided = cfg_truncation(times, trunc_ratio)
    denoise = cfg_denoiser(backbone, obj.to_x0, Conditioning(embeds, mask), Conditioning(neg_embeds, neg_mask), scale,
                           renormalize=renorm, unguided=unguided)
    ours = sample_euler(denoise, latents.clone(), times, obj.alpha_sigma)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)

    # the comparison can tell the settings apart
    other = cfg_denoiser(backbone, obj.to_x0, Conditioning(embeds, mask), Conditioning(neg_embeds, neg_mask), scale,
                         renormalize=not renorm, unguided=unguided)
    assert (sample_euler(other, latents.clone(), times, obj.alpha_sigma) - expected).abs().max() > 1e-3


def test_guidance_rescale_matches_sdxl_pipeline_on_zero_snr_vpred():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4).eval()
    backbone = SDXLBackbone(unet, torch.nn.Identity(), torch.nn.Identity(), PixelAutoencoder(factor=1)).eval()
    steps, scale, rescale = 5, 5.0, 0.7
    g = torch.Generator().manual_seed(1)
    embeds, pooled = torch.randn(2, 5, 24, generator=g), torch.randn(2, 8, generator=g)
    neg_embeds, neg_pooled = torch.randn(2, 5, 24, generator=g), torch.randn(2, 8, generator=g)
    latents = torch.randn(2, 3, 8, 8, generator=g)

    # DDIM, trailing, zero-terminal SNR, v-prediction: the zero-SNR v-pred recipe (Lin et al. 2024)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                              set_alpha_to_one=True, clip_sample=False)
    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                     unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg_embeds,
                    negative_pooled_prompt_embeds=neg_pooled, latents=latents.clone(), height=64, width=64,
                    num_inference_steps=steps, guidance_scale=scale, guidance_rescale=rescale,
                    output_type="latent").images

    obj = VPredictionObjective(zero_terminal_snr=True)
    size = torch.tensor([64.0, 64.0])  # the pipeline's micro-conditioning (its default VAE factor is 8)
    extras = {"original_size": size, "target_size": size}
    cond, uncond = Conditioning(embeds, None, pooled), Conditioning(neg_embeds, None, neg_pooled)
    denoise = cfg_denoiser(backbone, obj.to_x0, cond, uncond, scale, extras, guidance_rescale=rescale)
    ours = sample_euler(denoise, latents.clone(), obj.sampling_times(steps), obj.alpha_sigma)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    plain = cfg_denoiser(backbone, obj.to_x0, cond, uncond, scale, extras)
    assert (sample_euler(plain, latents.clone(), obj.sampling_times(steps), obj.alpha_sigma) - expected).abs().max() > 1e-3


class TwoPromptModel:
    """A deterministic toy model whose prediction depends on x, t and the conditioning; counts its batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond, extras):
        self.batches.append(x.shape[0])
        bias = cond.tokens.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return torch.tanh(x * (1 + t.reshape(-1, 1, 1, 1))) + bias


def conditions():
    g = torch.Generator().manual_seed(0)
    return Conditioning(torch.randn(2, 3, 4, generator=g)), Conditioning(torch.randn(2, 3, 4, generator=g))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_guided_denoiser_is_guidance_on_the_prediction(name):
    obj = OBJECTIVES[name]()
    model, (cond, uncond) = TwoPromptModel(), conditions()
    x, t = torch.randn(2, 3, 4, 4), torch.tensor(0.5)
    tt = t.expand(2)
    pc, pu = model(x, tt, cond, None), model(x, tt, uncond, None)
    guided = pu + 6.0 * (pc - pu)
    denoise = cfg_denoiser(model, obj.to_x0, cond, uncond, 6.0, guidance_rescale=0.5, renormalize=True)
    expected = rescale_noise_cfg(guided, pc, guidance_rescale=0.5)
    expected = expected * torch.norm(pc, dim=-1, keepdim=True) / torch.norm(expected, dim=-1, keepdim=True)
    torch.testing.assert_close(denoise(x, t), obj.to_x0(x, expected, tt))
    # scale 1, or no negative conditioning: one conditional pass, no guidance
    model.batches.clear()
    torch.testing.assert_close(cfg_denoiser(model, obj.to_x0, cond, uncond, 1.0)(x, t), obj.to_x0(x, pc, tt))
    torch.testing.assert_close(cfg_denoiser(model, obj.to_x0, cond, None, 6.0)(x, t), obj.to_x0(x, pc, tt))
    assert model.batches == [2, 2]


def test_truncated_steps_skip_the_unconditional_pass():
    obj = FlowObjective()
    model, (cond, uncond) = TwoPromptModel(), conditions()
    times = obj.sampling_times(8)
    denoise = cfg_denoiser(model, obj.to_x0, cond, uncond, 4.0, unguided=cfg_truncation(times, 0.25))
    sample_euler(denoise, torch.randn(2, 3, 4, 4), times, obj.alpha_sigma)
    # Lumina: guided while (i + 1) / 8 <= 0.25, i.e. steps 0 and 1 (a doubled batch), then conditional only
    assert model.batches == [4, 4, 2, 2, 2, 2, 2, 2]


def test_bad_guidance_settings_are_refused():
    obj = FlowObjective()
    model, (cond, uncond) = TwoPromptModel(), conditions()
    with pytest.raises(ValueError, match="guidance_rescale"):
        cfg_denoiser(model, obj.to_x0, cond, uncond, 4.0, guidance_rescale=1.5)
    with pytest.raises(ValueError, match="cfg_trunc_ratio"):
        cfg_truncation(obj.sampling_times(4), -0.1)
    with pytest.raises(ValueError, match="not on the sampling grid"):
        cfg_truncation(obj.sampling_times(4), 0.5)(torch.tensor(0.123))
