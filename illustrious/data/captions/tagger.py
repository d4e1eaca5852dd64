"""An auto-tagger for folders without tags: a timm image model with a label table, in the WD-tagger layout.

A tagger folder holds `model.safetensors` (timm weights), `selected_tags.csv` (columns tag_id, name,
category, count; category 0 = general, 4 = character, 9 = rating) and optionally timm's `config.json`
(its `num_classes` and `pretrained_cfg.input_size` are checked against ours). The architecture is named in
our config, never taken from the folder, so a downloaded tagger cannot choose code to run.

Preprocessing follows SmilingWolf's WD v3 timm example: alpha composited on white, padded to a white square,
resized (bicubic) to the input size, scaled to [-1, 1], channels in BGR order; probabilities are sigmoids.
General tags above `general_threshold`, character tags above `character_threshold`, the most likely rating.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from illustrious.errors import ConfigError

CATEGORIES = {0: "general", 4: "character", 9: "rating"}
RATING_NAMES = {"general": "general", "sensitive": "sensitive", "questionable": "questionable",
                "explicit": "explicit", "safe": "general"}


@dataclass
class Labels:
    names: list[str]
    categories: np.ndarray  # (N,) int

    @classmethod
    def read(cls, path: Path) -> Labels:
        if not path.is_file():
            raise ConfigError(f"No label table at {path}: a tagger folder needs selected_tags.csv (tag_id,name,category,count).")
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"name", "category"} <= set(rows[0]):
            raise ConfigError(f"{path}: expected a CSV with 'name' and 'category' columns (the WD-tagger layout).")
        try:
            categories = np.array([int(r["category"]) for r in rows])
        except ValueError as e:
            raise ConfigError(f"{path}: a 'category' value is not an integer ({e}).") from None
        return cls([r["name"] for r in rows], categories)


class Tagger:
    def __init__(self, folder: str | Path, architecture: str, image_size: int = 448, general_threshold: float = 0.35,
                 character_threshold: float = 0.85, model_args: dict | None = None, device: str = "cpu"):
        """`model_args`: keyword arguments of the timm model (a ViT tagger needs {img_size: 448})."""
        import timm
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"No tagger weights at {weights}: point tagger.folder at a WD-tagger-style folder "
                              "with model.safetensors and selected_tags.csv.")
        self.labels = Labels.read(folder / "selected_tags.csv")
        self.image_size = image_size
        self.thresholds = {"general": general_threshold, "character": character_threshold}
        check_config(folder / "config.json", len(self.labels.names), image_size)
        model = timm.create_model(architecture, pretrained=False, num_classes=len(self.labels.names),
                                  **dict(model_args or {}))
        state = load_file(str(weights))
        state = {k.removeprefix("model."): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{weights} does not fit timm's {architecture!r} with {len(self.labels.names)} classes "
                              f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...); check tagger.architecture.")
        self.model = model.eval().to(device)
        self.device = device

    def preprocess(self, image) -> torch.Tensor:
        """A PIL image -> (3, S, S) float in [-1, 1], BGR."""
        from PIL import Image

        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image)
        rgb = canvas.convert("RGB")
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        square = square.resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(square, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        return x[[2, 1, 0]]

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self.model(pixels.to(self.device)).float()).cpu().numpy()

    def tags(self, probs: np.ndarray) -> dict:
        """One image's probabilities -> {"tags": {"general": [...], "character": [...]}, "rating": ...}."""
        cats, names = self.labels.categories, self.labels.names
        out = {}
        for code, category in ((0, "general"), (4, "character")):
            idx = np.flatnonzero((cats == code) & (probs > self.thresholds[category]))
            idx = idx[np.argsort(-probs[idx], kind="stable")]
            out[category] = [names[i] for i in idx]
        rating_idx = np.flatnonzero(cats == 9)
        rating = names[rating_idx[np.argmax(probs[rating_idx])]] if len(rating_idx) else None
        return {"tags": out, "rating": RATING_NAMES.get(rating, rating)}


def check_config(path: Path, num_classes: int, image_size: int) -> None:
    """timm's config.json, if present, must agree with the label table and our input size."""
    if not path.is_file():
        return
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON ({e}).") from None
    if "num_classes" in cfg and int(cfg["num_classes"]) != num_classes:
        raise ConfigError(f"{path} says {cfg['num_classes']} classes but selected_tags.csv lists {num_classes}.")
    size = (cfg.get("pretrained_cfg") or {}).get("input_size")
    if size and int(size[-1]) != image_size:
        raise ConfigError(f"{path} expects {size[-1]}-px inputs; set tagger.image_size={size[-1]}.")
