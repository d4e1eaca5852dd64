"""Export a trained backbone to the formats the generation tools load.

- SDXL: `diffusers` (a folder StableDiffusionXLPipeline loads) and `single_file` (the original sgm/ldm layout that
  ComfyUI, A1111 and Forge load: UNet, both text encoders, VAE).
- Lumina-2: `diffusers`, `comfyui` (ComfyUI's all-in-one file) and `original` (Alpha-VLLM's consolidated layout).

Single files carry the prediction markers (`v_pred`/`ztsnr` keys and `modelspec.*`; see markers.py), the
training run's stored config and provenance in their metadata. Every write is atomic and refuses to replace an
existing path unless `overwrite`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from illustrious.errors import ConfigError
from illustrious.weights import markers
from illustrious.weights.writing import write_folder, write_safetensors

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
RUN_KEY, PROVENANCE_KEY = "illustrious.run", "illustrious.provenance"


@dataclass(frozen=True)
class Family:
    """What the model is, to the tools that read the metadata."""

    architecture: str  # modelspec.architecture
    implementation: str  # modelspec.implementation
    pipeline: str  # diffusers pipeline class for model_index.json
    denoiser_folder: str
    text_parts: tuple[tuple[str, str, str], ...]  # (encoder name, text encoder folder, tokenizer folder)


SDXL = Family("stable-diffusion-xl-v1-base", "https://github.com/Stability-AI/generative-models",
              "StableDiffusionXLPipeline", "unet",
              (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2")))
LUMINA = Family("lumina-2", "https://github.com/Alpha-VLLM/Lumina-Image-2.0", "Lumina2Pipeline", "transformer",
                (("gemma", "text_encoder", "tokenizer"),))
FAMILIES = {"SDXLBackbone": SDXL, "LuminaBackbone": LUMINA}
# format -> (what it writes, the backbone method giving the state dict for single files)
FORMATS: dict[str, dict[str, str | None]] = {
    "SDXLBackbone": {"diffusers": None, "single_file": "original_state_dict"},
    "LuminaBackbone": {"diffusers": None, "comfyui": "comfyui_state_dict", "original": "original_state_dict"},
}
FLOW_SDXL_NOTE = ("Rectified-flow SDXL (like bigASP v2.5): it predicts noise - x0, not epsilon. In ComfyUI load it "
                  "with ModelSamplingSD3 (shift 1-6) before the sampler; A1111/Forge need a flow-matching sampler "
                  "option; diffusers: FlowMatchEulerDiscreteScheduler (scheduler/ in the diffusers export).")


def family(backbone) -> Family:
    name = type(backbone).__name__
    if name not in FAMILIES:
        raise ConfigError(f"No export formats for {name}; exportable backbones: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def formats_for(backbone) -> tuple[str, ...]:
    return tuple(FORMATS[type(backbone).__name__])


def modelspec(fam: Family, kind: markers.PredictionType, title: str, resolution: int | None) -> dict[str, str]:
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": fam.architecture,
            "modelspec.implementation": fam.implementation, "modelspec.title": title,
            "modelspec.date": dt.date.today().isoformat(), **markers.marker_metadata(kind)}
    if resolution:
        meta["modelspec.resolution"] = f"{resolution}x{resolution}"
    if fam is SDXL and kind.prediction == "flow":
        meta["modelspec.description"] = FLOW_SDXL_NOTE
    return meta


def _cast(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype`; integer buffers (position ids) and empty marker tensors keep theirs."""
    return {k: v.to(dtype) if v.is_floating_point() and v.numel() else v for k, v in tensors.items()}


def _check_latent(backbone, fmt: str) -> None:
    from illustrious.backbones.autoencoders import LatentAutoencoder

    if not isinstance(backbone.autoencoder, LatentAutoencoder):
        raise ConfigError(f"format={fmt}: this model works in pixel space ({type(backbone.autoencoder).__name__}), and "
                          "the tools that load these formats need a VAE. Train a backbone with a latent autoencoder "
                          "(backbone=sdxl, lumina, or the *_tiny_vae test flavors) to export it.")


def check_export(backbone, objective, fmt: str, dtype: str) -> None:
    """Everything that decides whether `export_backbone` can write this model in `fmt`, checked without writing
    (the export callback calls it before training, so a run never trains to fail at its export)."""
    family(backbone)
    known = FORMATS[type(backbone).__name__]
    if fmt not in known:
        raise ConfigError(f"format={fmt!r} is not one of {type(backbone).__name__}'s export formats: {', '.join(known)}.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}.")
    _check_latent(backbone, fmt)
    markers.check_exportable(markers.of_objective(objective))


def export_backbone(backbone, objective, fmt: str, out: str | Path, *, dtype: str = "fp16", overwrite: bool = False,
                    title: str | None = None, run_config: Mapping | None = None, provenance: Mapping | None = None,
                    resolution: int | None = None) -> Path:
    """Write `backbone` (trained with `objective`) to `out` in format `fmt`; returns the path written."""
    check_export(backbone, objective, fmt, dtype)
    fam, known, kind = family(backbone), FORMATS[type(backbone).__name__], markers.of_objective(objective)
    out = Path(out).expanduser()
    title = title or out.stem
    meta = modelspec(fam, kind, title, resolution)
    meta[RUN_KEY] = json.dumps(dict(run_config or {}))
    meta[PROVENANCE_KEY] = json.dumps({"exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                       "format": fmt, "dtype": dtype, **dict(provenance or {})})
    method = known[fmt]
    if method is None:
        return write_folder(out, lambda tmp: _fill_diffusers(backbone, fam, kind, meta, DTYPES[dtype], tmp), overwrite)
    tensors = _cast(getattr(backbone, method)(), DTYPES[dtype])
    if fam is SDXL:  # ComfyUI reads these keys from SDXL files only
        tensors.update(markers.marker_tensors(kind))
    return write_safetensors(tensors, out, meta, overwrite=overwrite)


def _fill_diffusers(backbone, fam: Family, kind: markers.PredictionType, meta: Mapping[str, str],
                    dtype: torch.dtype, root: Path) -> None:
    """A diffusers folder: the backbone's own save_pretrained (cast on a copy), scheduler, model_index, README."""
    model = copy.deepcopy(backbone).to(dtype) if dtype != torch.float32 else backbone
    model.save_pretrained(root)
    scheduler = markers.scheduler_config(kind)
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {"_class_name": fam.pipeline, "scheduler": ["diffusers", scheduler["_class_name"]],
             fam.denoiser_folder: ["diffusers", type(backbone.denoiser).__name__],
             "vae": ["diffusers", type(backbone.autoencoder.vae).__name__]}
    for name, encoder_folder, tokenizer_folder in fam.text_parts:
        encoder = backbone.text_encoders[name]
        index[encoder_folder] = ["transformers", type(encoder.model).__name__]
        index[tokenizer_folder] = ["transformers", type(encoder.tokenizer).__name__]
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    (root / "illustrious.json").write_text(json.dumps(dict(meta), indent=2))
    line = f"Prediction type: {kind.describe()}."
    if fam is SDXL and kind.prediction == "flow":
        line += " " + FLOW_SDXL_NOTE
    (root / "README.md").write_text(f"# {meta['modelspec.title']}\n\nExported by Illustrious ({fam.architecture}). "
                                    f"{line}\n")


# -- from a training checkpoint ---------------------------------------------------------------------------------
def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, *, dtype: str = "fp16",
                      overwrite: bool = False, allow_pickle: bool = False, title: str | None = None,
                      config_dirs=None) -> Path:
    """Rebuild the model a training checkpoint holds (its stored run config selects our own config groups only,
    or the user's `config_dirs`: run_config.rebuild_run_config) and export it."""
    from omegaconf import OmegaConf

    from illustrious.weights.rebuild import module_from_checkpoint
    from illustrious.weights.run_config import LEGACY_KEY, STORED_KEY

    module, run_cfg, ckpt = module_from_checkpoint(checkpoint, allow_pickle, config_dirs)
    stored = ckpt.get(STORED_KEY) or {"legacy": True, "choices": {}, "values": {}}
    if LEGACY_KEY in ckpt and STORED_KEY not in ckpt:  # record plain values only, never the old targets
        from illustrious.weights.run_config import plain_values

        stored = {"choices": {}, "values": plain_values(ckpt[LEGACY_KEY])}
    provenance = {"checkpoint": str(checkpoint), "backbone": type(module.backbone).__name__,
                  "objective": type(module.objective).__name__}
    resolution = OmegaConf.select(run_cfg, "data.height")
    return export_backbone(module.backbone, module.objective, fmt, out, dtype=dtype, overwrite=overwrite, title=title,
                           run_config=stored, provenance=provenance,
                           resolution=int(resolution) if resolution else None)
