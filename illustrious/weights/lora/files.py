"""LoRA files: write a backbone's adapters in a format other tools load, and read them back to continue.

Formats (`save_lora(..., format=)`):
- `comfyui`: SDXL in kohya's key layout (`lora_unet_*`, `lora_te1_*`, `lora_te2_*`; sdxl_keys.py), which
  ComfyUI, A1111/Forge and diffusers' `load_lora_weights` read; Lumina-2 in ComfyUI's native
  `diffusion_model.*` layout with fused qkv (lumina_keys.py), which diffusers also reads.
- `diffusers`: diffusers' own layout (`unet.`/`text_encoder.`/`text_encoder_2.`/`transformer.` + peft
  keys, rank and alpha in the safetensors metadata), written by the pipeline's `save_lora_weights`.
`load_lora` reads any of them (by their keys) into adapters applied with the same method and targets.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch

from illustrious.errors import ConfigError
from illustrious.weights.lora import lumina_keys, sdxl_keys
from illustrious.weights.lora.adapters import ADAPTER, METHODS, adapted_layers, factors, rank_and_alpha

FORMATS = ("comfyui", "diffusers")


def _kind(backbone) -> str:
    name = type(backbone.denoiser).__name__
    kinds = {"UNet2DConditionModel": "sdxl", "Lumina2Transformer2DModel": "lumina"}
    if name not in kinds:
        raise ConfigError(f"No LoRA file layout for a {name} denoiser (known: {sorted(kinds)}).")
    return kinds[name]


def _method(backbone) -> str:
    return backbone.lora_settings.method


def _scale(layer) -> float:
    return float(layer.scaling[ADAPTER])


def _lokr_full(f: dict) -> bool:
    """A LoKr layer with no low-rank factor: ComfyUI/LyCORIS then apply it unscaled (alpha is ignored)."""
    return "lokr_w1_b" not in f and "lokr_w2_b" not in f


# -- SDXL, kohya layout -----------------------------------------------------------------------------------
def _kohya_names(backbone):
    config = backbone.denoiser.config
    if not isinstance(config.layers_per_block, int):
        raise ConfigError("The kohya LoRA layout needs the same layers_per_block on every UNet level.")
    for group, path, layer in adapted_layers(backbone):
        yield sdxl_keys.layer_name(group, path, config), layer


def _kohya_save(backbone) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in _kohya_names(backbone):
        f = {k: v.detach() for k, v in factors(layer).items()}
        r, alpha = rank_and_alpha(layer)
        if "lokr_w1" in f and _lokr_full(f):
            f["lokr_w1"], alpha = f["lokr_w1"] * _scale(layer), float(r)
        for k, v in f.items():
            out[f"{name}.{sdxl_keys.FILE_NAMES.get(k, k)}"] = v.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


@torch.no_grad()
def _kohya_load(backbone, tensors: dict) -> None:
    tensors, used = dict(tensors), set()
    for name, layer in _kohya_names(backbone):
        f = factors(layer)
        r, alpha = rank_and_alpha(layer)
        file_alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else float(r)
        used.add(f"{name}.alpha")
        for k, param in f.items():
            key = f"{name}.{sdxl_keys.FILE_NAMES.get(k, k)}"
            _copy(param, tensors, key)
            used.add(key)
        carrier = METHODS[_method(backbone)][2] if METHODS[_method(backbone)][2] in f else "lokr_w1_a"
        if "lokr_w1" in f and _lokr_full(f):
            f["lokr_w1"].div_(_scale(layer))
        else:  # keep the file's effective scale file_alpha / r under our alpha / r
            f[carrier].mul_(file_alpha / alpha)
    _check_all_used(tensors, used)


# -- Lumina-2, ComfyUI native layout ---------------------------------------------------------------------
def _lumina_layers(backbone):
    if _method(backbone) != "lora":
        raise ConfigError("The ComfyUI Lumina-2 layout holds plain LoRA (fused qkv); save LoHa/LoKr as format=diffusers.")
    for group, path, layer in adapted_layers(backbone):
        if group != "denoiser":
            raise ConfigError("ComfyUI's Lumina-2 LoRA layout holds the denoiser only (so does diffusers'): with "
                              "text-encoder adapters set lora.save=[] (they stay in the training checkpoint).")
        yield path, layer


def _lumina_save(backbone) -> dict[str, torch.Tensor]:
    out, qkv = {}, defaultdict(dict)
    for path, layer in _lumina_layers(backbone):
        f = factors(layer)
        a, b = f["lora_A"].detach(), f["lora_B"].detach() * _scale(layer)
        part = lumina_keys.qkv_part(path)
        if part:
            qkv[part[0]][part[1]] = (a, b)
            continue
        key = lumina_keys.PREFIX + lumina_keys.native_path(path)
        out[f"{key}.lora_A.weight"], out[f"{key}.lora_B.weight"] = a.contiguous(), b.contiguous()
    for block, parts in qkv.items():
        if len(parts) != 3:
            raise ConfigError(f"{block}: ComfyUI fuses q, k and v into one linear, so LoRA must target all of "
                              "to_q, to_k and to_v (or none) for this format.")
        key = lumina_keys.PREFIX + lumina_keys.native_path(f"{block}.attn.to_q")
        out[f"{key}.lora_A.weight"] = torch.cat([parts[i][0] for i in range(3)]).contiguous()
        out[f"{key}.lora_B.weight"] = torch.block_diag(*[parts[i][1] for i in range(3)]).contiguous()
    return out


@torch.no_grad()
def _lumina_load(backbone, tensors: dict) -> None:
    used, qkv = set(), defaultdict(dict)
    for path, layer in _lumina_layers(backbone):
        f = factors(layer)
        part = lumina_keys.qkv_part(path)
        if part:
            qkv[part[0]][part[1]] = layer
            continue
        key = lumina_keys.PREFIX + lumina_keys.native_path(path)
        _copy(f["lora_A"], tensors, f"{key}.lora_A.weight")
        _copy(f["lora_B"], tensors, f"{key}.lora_B.weight", scale=1 / _scale(layer))
        used |= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
    for block, layers in qkv.items():
        key = lumina_keys.PREFIX + lumina_keys.native_path(f"{block}.attn.to_q")
        down, up = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
        ranks = [layers[i].r[ADAPTER] for i in range(3)]
        rows = [factors(layers[i])["lora_B"].shape[0] for i in range(3)]
        blocks = [up[sum(rows[:i]):sum(rows[:i + 1]), sum(ranks[:i]):sum(ranks[:i + 1])] for i in range(3)]
        if down.shape[0] != sum(ranks) or not torch.equal(torch.block_diag(*blocks), up):
            raise ConfigError(f"{key}: this fused qkv LoRA (rank {down.shape[0]}) is not three rank-{ranks[0]} "
                              "q/k/v adapters side by side, so it cannot continue training at lora.rank="
                              f"{ranks[0]}; load it with diffusers, or set lora.rank to match.")
        for i in range(3):
            f = factors(layers[i])
            f["lora_A"].copy_(down[sum(ranks[:i]):sum(ranks[:i + 1])])
            f["lora_B"].copy_(blocks[i] / _scale(layers[i]))
        used |= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
    _check_all_used(tensors, used)


# -- diffusers layout -------------------------------------------------------------------------------------
def _diffusers_components(backbone) -> dict[str, str]:
    """Our groups -> the diffusers pipeline's component names."""
    names = {"denoiser": "unet" if _kind(backbone) == "sdxl" else "transformer",
             "text_encoder": "text_encoder", "text_encoder_1": "text_encoder", "text_encoder_2": "text_encoder_2"}
    return {g: names[g] for g in backbone.adapter_prefixes}


def _pipeline(backbone):
    from diffusers import Lumina2Pipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if _kind(backbone) == "sdxl" else Lumina2Pipeline


def _peft_key(group: str, path: str, name: str, kind: str) -> str:
    if kind == "sdxl" and group != "denoiser":  # CLIP: the portable `text_model.` paths (diffusers strips them)
        path = sdxl_keys.clip_path(path)
    return f"{path}.{name}.weight" if name.startswith("lora_") else f"{path}.{name}"


def _diffusers_kwargs(backbone) -> dict:
    """`save_lora_weights` arguments: `<component>_lora_layers` and `<component>_lora_adapter_metadata`."""
    import inspect

    layers, metadata = defaultdict(dict), {}
    components = _diffusers_components(backbone)
    for group, module_path, layer in adapted_layers(backbone):
        for name, t in factors(layer).items():
            layers[components[group]][_peft_key(group, module_path, name, _kind(backbone))] = t.detach().contiguous()
        r, alpha = rank_and_alpha(layer)
        meta = metadata.setdefault(components[group], {"r": r, "target_modules": []})
        meta["lora_alpha" if _method(backbone) == "lora" else "alpha"] = alpha
        if _method(backbone) != "lora":
            meta["peft_type"] = _method(backbone).upper()
        meta["target_modules"].append(module_path)
    pipeline = _pipeline(backbone)
    accepted = inspect.signature(pipeline.save_lora_weights).parameters
    kwargs = {}
    for component, tensors in layers.items():
        if f"{component}_lora_layers" not in accepted:
            raise ConfigError(f"{pipeline.__name__}'s LoRA files hold no {component}: leave it out of "
                              "lora.text_encoders, or drop diffusers from lora.save (the checkpoint keeps it).")
        kwargs[f"{component}_lora_layers"] = tensors
        kwargs[f"{component}_lora_adapter_metadata"] = metadata[component]
    return kwargs


def _diffusers_save(backbone, path: Path) -> None:
    _pipeline(backbone).save_lora_weights(save_directory=str(path.parent), weight_name=path.name,
                                          safe_serialization=True, **_diffusers_kwargs(backbone))


def _native_tensors(backbone) -> dict[str, torch.Tensor]:
    return _kohya_save(backbone) if _kind(backbone) == "sdxl" else _lumina_save(backbone)


def check_formats(backbone, formats) -> None:
    """Stop before training when the adapters cannot be written in one of `formats` (lora.save)."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"lora.save: unknown format {fmt!r}; choose from {FORMATS}.")
        (_diffusers_kwargs if fmt == "diffusers" else _native_tensors)(backbone)


@torch.no_grad()
def _diffusers_load(backbone, tensors: dict, metadata: dict) -> None:
    used = set()
    packed = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    components = _diffusers_components(backbone)
    for group, module_path, layer in adapted_layers(backbone):
        r, alpha = rank_and_alpha(layer)
        component = components[group]
        file_alpha = float(packed.get(f"{component}.lora_alpha", packed.get(f"{component}.alpha", r)))
        f = factors(layer)
        for name, param in f.items():
            key = f"{component}.{_peft_key(group, module_path, name, _kind(backbone))}"
            _copy(param, tensors, key)
            used.add(key)
        carrier = METHODS[_method(backbone)][2] if METHODS[_method(backbone)][2] in f else "lokr_w1_a"
        f[carrier].mul_(file_alpha / alpha)
    _check_all_used(tensors, used)


# -- shared ---------------------------------------------------------------------------------------------
def _copy(param: torch.Tensor, tensors: dict, key: str, scale: float = 1.0) -> None:
    if key not in tensors:
        raise ConfigError(f"The LoRA file has no {key!r}: it was trained with other targets, method or "
                          "components; set lora.* to match it.")
    value = tensors[key]
    if value.shape != param.shape:
        raise ConfigError(f"{key}: the file's shape {tuple(value.shape)} differs from this adapter's "
                          f"{tuple(param.shape)}; set lora.rank (and targets) to match the file.")
    param.copy_(value.to(param.dtype) * scale)


def _check_all_used(tensors: dict, used: set) -> None:
    unused = sorted(set(tensors) - used)
    if unused:
        raise ConfigError(f"The LoRA file has {len(unused)} tensor(s) no adapter here takes, e.g. {unused[:3]}; "
                          "set lora.* (targets, text_encoders) to match it.")


def save_lora(backbone, path: str | Path, format: str = "comfyui") -> Path:
    """Write the backbone's adapters to `path` (a .safetensors file) in `format`; atomic."""
    from safetensors.torch import save_file

    if not backbone.adapter_prefixes:
        raise ConfigError("This backbone has no LoRA adapters to save (lora=none).")
    if format not in FORMATS:
        raise ConfigError(f"LoRA format {format!r}: choose one of {FORMATS}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.safetensors")
    if format == "diffusers":
        _diffusers_save(backbone, tmp)
    else:
        save_file(_native_tensors(backbone), tmp, metadata={"format": "pt", "ss_network_module": f"illustrious.{_method(backbone)}"})
    tmp.replace(path)
    return path


def load_lora(backbone, path: str | Path) -> str:
    """Read a LoRA file (any format above) into the backbone's adapters; returns the format found."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise ConfigError(f"lora.weights={str(path)!r}: expected an existing .safetensors LoRA file.")
    with safe_open(path, framework="pt") as f:
        metadata, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    first = next(iter(tensors), "")
    if re.match(r"lora_(unet|te\d?)_", first):
        _kohya_load(backbone, tensors)
        return "comfyui"
    if first.startswith(lumina_keys.PREFIX):
        _lumina_load(backbone, tensors)
        return "comfyui"
    _diffusers_load(backbone, tensors, metadata)
    return "diffusers"


def export_paths(output_dir: str | Path) -> dict[str, Path]:
    """Where training writes its LoRA files: one a ComfyUI `loras/` folder takes, one diffusers'
    `pipe.load_lora_weights(<output_dir>/lora/diffusers)` takes."""
    root = Path(output_dir) / "lora"
    return {"comfyui": root / "comfyui.safetensors", "diffusers": root / "diffusers" / "pytorch_lora_weights.safetensors"}
