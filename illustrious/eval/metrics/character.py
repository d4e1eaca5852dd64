"""Character similarity (the Illustrious paper's CCIP metric): do generated images look like the character?

A `TimmEmbedder` (local weights; for CCIP proper, a character-discriminating model) embeds a reference set
per character, a folder holding one subfolder of images per character (`references/<name>/*.png`). A
generated image belongs to the characters whose name its prompt contains (the folder name with `_` read as a
space, matched as whole words, case-insensitively: `hatsune_miku` matches "1girl, hatsune miku, smile").
Per image and character we take the cosine similarities to every reference image of that character, and
report per character over its images:

- `<name>/mean`: the mean over images of the mean similarity to the references;
- `<name>/max`: the mean over images of the best similarity to any reference;
- `<name>/images`: how many generated images were scored;

and `mean` / `max` over all scored (image, character) pairs. Images whose prompts name no character are
not scored. The states are per-character sums, so batches and processes add up.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from illustrious.errors import ConfigError
from illustrious.eval.metrics.embedder import TimmEmbedder
from illustrious.eval.metrics.images import image_files, load_images

log = logging.getLogger(__name__)


def reference_folders(root: str | Path, key: str = "references") -> dict[str, list[Path]]:
    """character name -> its image files; every character needs at least one image."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}={str(root)!r} is not a folder: give a folder with one subfolder of reference "
                          "images per character (e.g. references/hatsune_miku/*.png).")
    characters = {p.name: image_files(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not characters:
        raise ConfigError(f"{key}={str(root)!r} holds no character subfolders (references/<name>/*.png).")
    empty = [name for name, files in characters.items() if not files]
    if empty:
        raise ConfigError(f"{key}={str(root)!r}: no images for {', '.join(empty)}.")
    return characters


def name_pattern(name: str) -> re.Pattern:
    words = [re.escape(w) for w in re.split(r"[_\s]+", name.strip().lower()) if w]
    return re.compile(r"(?<![\w])" + r"[_\s]+".join(words) + r"(?![\w])")


class CharacterSimilarity(Metric):
    """`update(images, prompts)`; `compute()` -> {mean, max, <name>/mean, <name>/max, <name>/images}."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, embedder: TimmEmbedder, references: dict[str, Tensor], **kwargs):
        """`references`: character name -> (K, 3, H, W) uint8 reference images."""
        super().__init__(**kwargs)
        self.embedder = embedder
        self.names = list(references)
        self.patterns = [name_pattern(n) for n in self.names]
        self._references = references
        self._embedded: list[Tensor] | None = None
        c = len(self.names)
        self.add_state("mean_sum", torch.zeros(c, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("max_sum", torch.zeros(c, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(c, dtype=torch.int64), dist_reduce_fx="sum")

    @classmethod
    def from_folder(cls, embedder: TimmEmbedder, root: str | Path, **kwargs) -> CharacterSimilarity:
        references = {}
        for name, files in reference_folders(root).items():
            images, skipped = load_images(files, embedder.size)
            for file in skipped:
                log.warning("reference image %s does not decode; skipped", file)
            if not images:
                raise ConfigError(f"references: none of the images for {name!r} decode.")
            references[name] = torch.stack(images)
        return cls(embedder, references, **kwargs)

    def characters_in(self, prompt: str) -> list[int]:
        text = prompt.lower()
        return [i for i, pattern in enumerate(self.patterns) if pattern.search(text)]

    def reference_embeddings(self) -> list[Tensor]:
        """Unit-length embeddings of each character's references, computed once on the metric's device."""
        if self._embedded is None or self._embedded[0].device != self.mean_sum.device:
            self._embedded = [F.normalize(self.embedder(images.to(self.mean_sum.device)).double(), dim=-1)
                              for images in self._references.values()]
        return self._embedded

    def update(self, images: Tensor, prompts: list[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        wanted = [self.characters_in(p) for p in prompts]
        rows = [i for i, found in enumerate(wanted) if found]
        if not rows:
            return
        embedded = F.normalize(self.embedder(images[rows].to(self.mean_sum.device)).double(), dim=-1)
        references = self.reference_embeddings()
        for e, i in zip(embedded, rows, strict=True):
            for c in wanted[i]:
                similarity = references[c] @ e  # (K,) cosine similarities
                self.mean_sum[c] += similarity.mean()
                self.max_sum[c] += similarity.max()
                self.count[c] += 1

    def compute(self) -> dict[str, Tensor]:
        """Means over scored images; NaN for a character no prompt named (nothing to average)."""
        def ratio(total: Tensor, n: Tensor) -> Tensor:
            return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, float("nan")))

        out = {"mean": ratio(self.mean_sum.sum(), self.count.sum()), "max": ratio(self.max_sum.sum(), self.count.sum())}
        for c, name in enumerate(self.names):
            out.update({f"{name}/mean": ratio(self.mean_sum[c], self.count[c]),
                        f"{name}/max": ratio(self.max_sum[c], self.count[c]), f"{name}/images": self.count[c]})
        return out
