"""Reading weight files without running code: safetensors always; pickle only when asked, and weights-only.

A pickle file (`.ckpt`, `.pt`, `.pth`, `.bin`) can name any function for Python to call while it is read,
so it is refused unless the caller opts in (`allow_pickle=True`, the `allow_pickle` config key), and even
then it is read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from illustrious.errors import ConfigError, MissingPathError, PickleRefused

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


def pickle_refusal(path: Path) -> str:
    return (f"{path} is a pickle file ({path.suffix}). Reading a pickle can run any code its author put in it, so "
            "it is refused. Convert it to safetensors, or, if you trust the file, opt in with allow_pickle=true: "
            "it is then read with torch.load(weights_only=True), which rebuilds tensors only.")


def read_pickle(path: str | Path, allow_pickle: bool = False, map_location=None) -> object:
    """The one place a pickle is read (weights files and training checkpoints): refused without the opt-in,
    then `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only."""
    path = Path(path)
    if not allow_pickle:
        raise PickleRefused(pickle_refusal(path))
    return torch.load(path, map_location=map_location, weights_only=True)


def read_weights(path: str | Path, allow_pickle: bool = False, device: str = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of one weights file. Pickle files give no metadata; a nested `state_dict` /
    `model` / `module` entry (how training scripts wrap weights) is unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"Weights file {path} does not exist.")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    if path.suffix not in PICKLE_SUFFIXES:
        raise ConfigError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors "
                         f"(or, with allow_pickle=true, one of {', '.join(PICKLE_SUFFIXES)}).")
    obj = read_pickle(path, allow_pickle, map_location=device)
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, {}


def read_metadata(path: str | Path) -> dict[str, str]:
    """A safetensors file's metadata, read from its header alone (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def read_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return list(f.keys())
