"""Export round trips through the paths a user takes: train -> `python -m illustrious.export` -> `backbone.weights=`,
and against an independent loader (diffusers' `from_single_file`), comparing every tensor and a forward pass."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from illustrious.config import instantiate
from illustrious.weights.safe_read import read_keys, read_metadata
from tests.conftest import FAST, compose_config

QUIET = ["callbacks.samples=null", "callbacks.progress=null", "callbacks.composition=null"]
PROMPTS = ["a red circle on the left", "two blue squares"]


def trained(tmp_path_factory, backbone: str, objective: str):
    from illustrious.train import train

    out = tmp_path_factory.mktemp(f"{backbone}-{objective}")
    train(compose_config([*FAST, *QUIET, f"backbone={backbone}", f"objective={objective}"], out))
    return out / "checkpoints" / "last.safetensors"


@pytest.fixture(scope="module")
def sdxl_vpred(tmp_path_factory):
    return trained(tmp_path_factory, "sdxl_tiny_vae", "vpred")


@pytest.fixture(scope="module")
def lumina_flow(tmp_path_factory):
    return trained(tmp_path_factory, "lumina_tiny_vae", "flow")


@pytest.fixture(scope="module")
def sdxl_exports(sdxl_vpred, tmp_path_factory):
    """The v-pred run exported through the command: a diffusers folder and an original-layout single file."""
    out = tmp_path_factory.mktemp("sdxl-exports")
    folder, single = out / "diffusers", out / "model.safetensors"
    export_cli(f"checkpoint={sdxl_vpred}", "format=diffusers", f"out={folder}", "dtype=fp32")
    export_cli(f"checkpoint={sdxl_vpred}", "format=single_file", f"out={single}", "dtype=fp32")
    return trained_module(sdxl_vpred), folder, single


@pytest.fixture(scope="module")
def lumina_exports(lumina_flow, tmp_path_factory):
    from illustrious.weights.export import export_checkpoint

    out = tmp_path_factory.mktemp("lumina-exports")
    paths = {fmt: export_checkpoint(lumina_flow, fmt, out / (fmt if fmt == "diffusers" else f"{fmt}.safetensors"),
                                    dtype="fp32") for fmt in ("diffusers", "comfyui", "original")}
    return trained_module(lumina_flow), paths


def export_cli(*args, expect_ok=True):
    proc = subprocess.run([sys.executable, "-m", "illustrious.export", *args], capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def load_public(backbone: str, *overrides: str):
    """The backbone exactly as `python -m illustrious.run backbone=... backbone.weights=...` builds it."""
    cfg = compose_config([f"backbone={backbone}", *overrides], "unused")
    return instantiate(cfg.backbone)


def trained_module(checkpoint):
    from illustrious.sample import load_module

    return load_module(str(checkpoint), device="cpu")[0]


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k].to(sa[k].dtype)), k
    torch.manual_seed(0)
    x, t = torch.randn(2, a.latent_channels, 8, 8), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        assert torch.equal(a(x, t, a.encode_text(PROMPTS)), b(x, t, b.encode_text(PROMPTS)))
        pixels = torch.rand(1, 3, 16, 16) * 2 - 1
        latents = a.autoencoder.vae.encode(pixels).latent_dist.mode()
        assert torch.equal(latents, b.autoencoder.vae.encode(pixels).latent_dist.mode())
        assert torch.equal(a.decode(latents), b.decode(latents))


def test_sdxl_single_file_and_diffusers_round_trip(sdxl_vpred, sdxl_exports):
    module, folder, single = sdxl_exports

    # the markers ComfyUI reads, and modelspec + run config + provenance in the metadata
    keys, meta = read_keys(single), read_metadata(single)
    assert {"v_pred", "ztsnr"} <= set(keys)
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert json.loads(meta["illustrious.run"])["choices"]["objective"] == "vpred"
    assert json.loads(meta["illustrious.provenance"])["checkpoint"] == str(sdxl_vpred)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"]

    from_folder = load_public("sdxl", f"backbone.weights={folder}")
    # the single file with the tiny architecture's configs and tokenizers (real SDXL uses the shipped ones)
    from_file = load_public("sdxl", f"backbone.weights={single}", f"backbone.config={folder}")
    for back in (from_folder, from_file):
        assert back.pretrained_prediction.prediction == "v" and back.pretrained_prediction.zero_terminal_snr
        assert_same_model(module.backbone, back)


def test_sdxl_single_file_loads_in_diffusers_from_single_file(sdxl_exports):
    """An independent loader: diffusers' own single-file path, offline, with the tiny model's config folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    module, folder, single = sdxl_exports
    unet = UNet2DConditionModel.from_single_file(str(single), config=str(folder), subfolder="unet",
                                                 local_files_only=True)
    vae = AutoencoderKL.from_single_file(str(single), config=str(folder), subfolder="vae", local_files_only=True)
    for ours, theirs in ((module.backbone.denoiser, unet), (module.backbone.autoencoder.vae, vae)):
        ref, got = ours.state_dict(), theirs.state_dict()
        assert set(ref) == set(got)
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(single), config=str(folder), local_files_only=True)
    for name, ours in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        ref, got = module.backbone.text_encoders[ours].model.state_dict(), getattr(pipe, name).state_dict()
        assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref), name
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    cond = module.backbone.encode_text(PROMPTS[:1])
    added = {"text_embeds": cond.pooled, "time_ids": module.backbone.time_ids(x, None)}
    with torch.no_grad():
        # weights are bitwise equal (above); the forward passes agree to float32 rounding (CPU kernels may pick
        # different vector paths for tensors read from a file and tensors copied into a module: 6e-7 seen)
        torch.testing.assert_close(unet(x, 500, cond.tokens, added_cond_kwargs=added).sample,
                                   module.backbone.denoiser(x, 500, cond.tokens, added_cond_kwargs=added).sample,
                                   rtol=1e-6, atol=2e-6)


def test_sdxl_fp16_export_and_no_overwrite(sdxl_vpred, tmp_path):
    single = tmp_path / "half.safetensors"
    export_cli(f"checkpoint={sdxl_vpred}", "format=single_file", f"out={single}")
    from safetensors.torch import load_file

    tensors = load_file(single)
    assert tensors["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert tensors["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    before = single.read_bytes()
    proc = export_cli(f"checkpoint={sdxl_vpred}", "format=single_file", f"out={single}", expect_ok=False)
    assert proc.returncode != 0 and "overwrite=true" in proc.stderr
    assert single.read_bytes() == before
    export_cli(f"checkpoint={sdxl_vpred}", "format=single_file", f"out={single}", "overwrite=true", "dtype=bf16")
    assert load_file(single)["model.diffusion_model.out.2.weight"].dtype == torch.bfloat16
    assert not list(tmp_path.glob(".*tmp"))


def test_objective_mismatch_is_refused_unless_overridden(sdxl_exports, tmp_path):
    from illustrious.errors import ConfigError
    from illustrious.train import train

    _, folder, single = sdxl_exports
    common = [*FAST, *QUIET, "backbone=sdxl", f"backbone.weights={single}", f"backbone.config={folder}",
              "trainer.max_steps=1"]
    with pytest.raises(ConfigError, match=r"v-prediction with zero-terminal SNR.*check_prediction_type=false"):
        train(compose_config([*common, "objective=eps"], tmp_path / "eps"))
    metrics, _ = train(compose_config([*common, "objective=eps", "backbone.check_prediction_type=false"],
                                      tmp_path / "eps-forced"))
    assert metrics["global_step"] == 1
    metrics, _ = train(compose_config([*common, "objective=vpred"], tmp_path / "vpred"))
    assert metrics["global_step"] == 1


@pytest.mark.parametrize("fmt", ["comfyui", "original", "diffusers"])
def test_lumina_round_trips(lumina_exports, fmt):
    module, paths = lumina_exports
    folder = paths["diffusers"]
    if fmt == "diffusers":
        back = load_public("lumina", "backbone.system_prompt=none", f"backbone.weights={folder}")
    else:
        single = paths[fmt]
        assert read_metadata(single)["modelspec.prediction_type"] == "flow"
        back = load_public("lumina", "backbone.system_prompt=none", f"backbone.weights={single}", f"backbone.base={folder}")
    assert back.pretrained_prediction.prediction == "flow"
    assert_same_model(module.backbone, back)


def test_lumina_comfyui_file_is_complete(lumina_exports, tmp_path):
    """The all-in-one file holds every part: with a base folder that has only configs and a tokenizer, it loads."""
    import shutil

    module, paths = lumina_exports
    single = paths["comfyui"]
    assert {k.split(".")[0] for k in read_keys(single)} == {"model", "text_encoders", "vae"}
    configs_only = tmp_path / "configs"
    shutil.copytree(paths["diffusers"], configs_only, ignore=shutil.ignore_patterns("*.safetensors"))
    back = load_public("lumina", "backbone.system_prompt=none", f"backbone.weights={single}", f"backbone.base={configs_only}")
    assert_same_model(module.backbone, back)


def test_export_format_errors_name_the_choices(sdxl_vpred, tmp_path):
    from illustrious.errors import ConfigError
    from illustrious.weights.export import export_checkpoint

    with pytest.raises(ConfigError, match="diffusers, single_file"):
        export_checkpoint(sdxl_vpred, "comfyui", tmp_path / "x.safetensors")
