"""A local image-embedding model: a timm architecture chosen by registry name, weights from a safetensors file.

Used as the feature model of FID/KID and as the character-similarity (CCIP) model. Nothing is downloaded
and nothing in a file chooses code: the name must be one of timm's registered models (checked against
`timm.list_models()` before anything is built), the model is created with `pretrained=False` and
`num_classes=0` (pooled features), and the weights are a safetensors state dict (a classifier head in it is
ignored; any other missing or extra key is an error naming the file).

Input: (N, 3, H, W) uint8 (or [-1, 1] pixels). Images are resized (bilinear, antialiased) to the model's
input size and normalised with its mean and std, as the model's pretrained config says.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from illustrious.errors import ConfigError
from illustrious.eval.metrics.images import as_uint8


def timm_models() -> list[str]:
    """Every architecture name timm can build (its registry; no weights involved)."""
    import timm

    return timm.list_models()


def check_model_name(name: str, key: str = "model") -> None:
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = [m for m in timm_models() if isinstance(name, str) and name.split("_")[0] in m][:5]
        hint = f" Close names: {', '.join(close)}." if close else " See timm.list_models()."
        raise ConfigError(f"{key}={name!r} is not a timm model name.{hint}")


def check_weights_file(path: str | Path, key: str = "weights") -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={str(path)!r} does not exist: give a local .safetensors file of the model's weights.")
    if file.suffix != ".safetensors":
        raise ConfigError(f"{key}={str(path)!r}: embedding-model weights are read from .safetensors files only.")
    return file


class TimmEmbedder(nn.Module):
    """(N, 3, H, W) images -> (N, num_features) pooled features of a local timm model, in eval mode."""

    def __init__(self, model_name: str, weights: str | Path, image_size: int | None = None):
        super().__init__()
        import timm
        from safetensors.torch import load_file

        check_model_name(model_name, "model_name")
        file = check_weights_file(weights)
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0)
        state = load_file(str(file))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        head = str(self.model.pretrained_cfg.get("classifier") or "head")
        unexpected = [k for k in unexpected if not k.startswith(head + ".")]
        if missing or unexpected:
            raise ConfigError(f"{file}: not weights of timm's {model_name!r} (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}{' ...' if len(missing) + len(unexpected) > 6 else ''}).")
        cfg = self.model.pretrained_cfg
        _, h, w = cfg.get("input_size", (3, 224, 224))
        self.size = (image_size, image_size) if image_size else (int(h), int(w))
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        self.num_features = int(self.model.num_features)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # the embedder stays in eval mode (FID wraps it in a training module)
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = as_uint8(images).to(self.mean.device, torch.float32) / 255.0
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return self.model((x - self.mean) / self.std).float()
