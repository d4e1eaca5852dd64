"""Where a real backbone's weights come from: a local diffusers folder or a single weights file, checked
before anything loads; and the shared steps of building a model from a config and a state dict."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from illustrious.errors import ConfigError


def diffusers_folder(weights: str | None, parts: tuple[str, ...], backbone: str, example: str) -> Path:
    """The folder at `weights` if it has every subfolder in `parts`; otherwise a ConfigError saying what to set."""
    root = locate_weights(weights, parts, backbone, example)
    if not root.is_dir():
        raise ConfigError(f"backbone.weights={weights!r} is not a folder; expected a local {backbone} diffusers folder.")
    return root


def locate_weights(weights: str | None, parts: tuple[str, ...], backbone: str, example: str) -> Path:
    """A weights file, or a diffusers folder with every subfolder in `parts`; otherwise a ConfigError."""
    layout = ", ".join(p + "/" for p in parts)
    if weights is None:
        raise ConfigError(
            f"backbone={backbone} needs pretrained weights: set backbone.weights=/path/to/{example}, a local "
            f"diffusers folder ({layout}) or a single .safetensors file. Nothing is downloaded. "
            f"To train without weights on a CPU, use backbone={backbone}_tiny."
        )
    root = Path(weights).expanduser()
    if root.is_file():
        return root
    if not root.is_dir():
        raise ConfigError(f"backbone.weights={weights!r} is not a folder or a weights file; expected a local {backbone} "
                          "diffusers folder or a single .safetensors file.")
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise ConfigError(f"{root} has no {', '.join(p + '/' for p in missing)} subfolder(s); a {backbone} diffusers "
                          f"folder needs {layout}.")
    return root


def component_config(config_dir: str | Path | None, subfolder: str, shipped: str) -> dict:
    """A component's architecture: `<config_dir>/<subfolder>/config.json` when a config folder is given (e.g. a
    tiny model's diffusers folder), else the real architecture shipped in the package."""
    from illustrious.backbones.architectures import architecture_config

    if config_dir is None:
        return dict(architecture_config(shipped))
    path = Path(config_dir).expanduser() / subfolder / "config.json"
    if not path.is_file():
        raise ConfigError(f"backbone.config={config_dir!r} has no {subfolder}/config.json; point it at a diffusers "
                          "folder of this architecture, or leave it null for the real architecture.")
    return json.loads(path.read_text())


def build_loaded(make: Callable[[], nn.Module], state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """`make()` with parameters on the meta device (no random init of billions of weights), then the state dict
    assigned in, strictly: a missing or unexpected key is an error naming the component. Weights come back in
    float32 whatever the file stored; buffers the model computes itself stay as built."""
    from accelerate import init_empty_weights

    refuse_nonfinite(state_dict, f"The weights for the {what}")
    with init_empty_weights(include_buffers=False):
        model = make()
    result = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"The weights for the {what} do not fit its architecture: missing "
                          f"{result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, unexpected "
                          f"{result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}. "
                          "Check backbone.config (the architecture) against the file.")
    return model.float()


def refuse_nonfinite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Weights holding NaN/Inf are refused, naming the file (in `source`) and the tensor."""
    from illustrious.checkpoint_io import NonFiniteError, find_nonfinite

    bad = find_nonfinite(dict(tensors), "")
    if bad:
        raise NonFiniteError(f"{source}: tensor {bad.lstrip('.')} holds NaN or Inf values; refusing to load it (a damaged "
                             "file, or one saved from a diverged run). Use another copy of the weights.")


def refuse_nonfinite_parts(parts: Mapping[str, nn.Module], root: Path) -> None:
    """The same for models loaded from a diffusers folder (one check per subfolder)."""
    for subfolder, model in parts.items():
        refuse_nonfinite(model.state_dict(), f"{Path(root) / subfolder}")
