"""Export time and peak memory for a real-size SDXL single file (random fp16 weights, on the CPU).

Builds the shipped SDXL architecture (UNet, CLIP-L, OpenCLIP-bigG, VAE) directly in fp16 (parameters made on
the meta device, then allocated uninitialised and filled with random values: no fp32 copy ever exists), then
times `export_backbone(..., format="single_file", dtype="fp16")`, which maps every key to the original layout and
writes the file atomically. Peak RSS is the process's high-water mark (includes the model itself).

    uv run python benchmarks/export_sdxl.py [--out /tmp/sdxl_export.safetensors] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from benchmarks.common import machine


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def random_fp16(make):
    import torch
    from accelerate import init_empty_weights

    torch.set_default_dtype(torch.float16)  # parameters made in fp16 on meta, so to_empty allocates fp16
    try:
        with init_empty_weights():
            model = make()
    finally:
        torch.set_default_dtype(torch.float32)
    model = model.to_empty(device="cpu").half()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def build():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from illustrious.backbones.architectures import architecture_config
    from illustrious.backbones.autoencoders import LatentAutoencoder
    from illustrious.backbones.sdxl import SDXLBackbone
    from illustrious.backbones.text_encoders import CLIPPromptEncoder, load_tokenizer

    unet = random_fp16(lambda: UNet2DConditionModel.from_config(architecture_config("sdxl_unet")))
    vae = random_fp16(lambda: AutoencoderKL.from_config(architecture_config("sdxl_vae")))
    te1 = random_fp16(lambda: CLIPTextModel(CLIPTextConfig.from_dict(architecture_config("sdxl_text_encoder"))))
    te2 = random_fp16(lambda: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(architecture_config("sdxl_text_encoder_2"))))
    tok = load_tokenizer("clip_tiny")  # tokenizers are not exported into single files
    return SDXLBackbone(unet, CLIPPromptEncoder(tok, te1), CLIPPromptEncoder(tok, te2), LatentAutoencoder(vae))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sdxl_export_benchmark.safetensors")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from illustrious.objectives import VPredictionObjective
    from illustrious.weights.export import export_backbone

    out = Path(args.out)
    start = time.perf_counter()
    backbone = build()
    built, rss_built = time.perf_counter() - start, rss_gib()
    params = sum(p.numel() for p in backbone.parameters())
    start = time.perf_counter()
    export_backbone(backbone, VPredictionObjective(zero_terminal_snr=True), "single_file", out, dtype="fp16",
                    overwrite=True, title="benchmark")
    seconds = time.perf_counter() - start
    size = out.stat().st_size / 2**30
    print(f"machine: {machine()}")
    print(f"model: {params / 1e9:.2f} B parameters in fp16, built in {built:.1f} s, RSS after build {rss_built:.2f} GiB")
    print(f"export single_file fp16: {seconds:.1f} s, file {size:.2f} GiB, peak RSS {rss_gib():.2f} GiB")
    if not args.keep:
        out.unlink()


if __name__ == "__main__":
    main()
