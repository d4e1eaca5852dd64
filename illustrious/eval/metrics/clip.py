"""CLIP score (Hessel et al. 2021: 100 x cosine of image and prompt embeddings, floored at 0) with a local model.

torchmetrics' `CLIPScore` computes the score; the model and processor are read from a local folder written
by transformers' `save_pretrained` (a CLIPModel and its CLIPProcessor), with `local_files_only=True` and
safetensors weights only, so nothing is downloaded and no pickle is read. The model is adapted to return
plain embedding tensors, which transformers 5's `get_*_features` wrap in an output object.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from torchmetrics.multimodal.clip_score import CLIPScore

from illustrious.errors import ConfigError
from illustrious.eval.metrics.images import as_uint8


class ClipEmbeddings(nn.Module):
    """A CLIPModel whose `get_image_features` / `get_text_features` return the projected embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def check_clip_folder(path: str | Path, key: str = "clip_model") -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ConfigError(f"{key}={str(path)!r} is not a local model folder: give a folder written by "
                          "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained (config.json, "
                          "model.safetensors, the tokenizer and processor files).")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{key}={str(path)!r} has no .safetensors weights (pickled weights are not read).")
    return folder


def load_local_clip(path: str | Path) -> tuple[nn.Module, object]:
    from transformers import CLIPModel, CLIPProcessor

    folder = check_clip_folder(path)
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    return ClipEmbeddings(model), processor


class LocalCLIPScore(CLIPScore):
    """`update(images, prompts)` with (N, 3, H, W) uint8 or [-1, 1] images; `compute()` the mean score."""

    def __init__(self, path: str | Path, **kwargs):
        folder = check_clip_folder(path)
        super().__init__(model_name_or_path=lambda: load_local_clip(folder), **kwargs)

    def update(self, images: Tensor, prompts: list[str]) -> None:
        super().update(list(as_uint8(images)), list(prompts))
