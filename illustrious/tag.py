"""`python -m illustrious.tag root=/data/new_images tagger.folder=/models/wd-vit-tagger-v3`

Tags the images of a folder that have no metadata sidecar with a WD-tagger-style timm model
(illustrious/data/captions/tagger.py) and writes `<image stem>.json` beside each: tags by category
(general, character), the rating, and which tagger and thresholds made them. The next scan reads them like
any Danbooru sidecar. Existing .json sidecars are left alone unless `overwrite=true`. Images that fail to
decode are skipped and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from illustrious.config import CONF_DIR
from illustrious.data.captions.tagger import Tagger
from illustrious.data.images.decode import ImageError, decode, exif_orientation, open_image
from illustrious.data.index.scan import list_folder
from illustrious.errors import ConfigError
from illustrious.utils.files import atomic_write_json

log = logging.getLogger(__name__)
BOMB_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit x 2


def tag_folder(root: str | Path, tagger: Tagger, *, batch_size: int = 16, overwrite: bool = False,
               progress: bool = True, source: dict | None = None) -> dict[str, int]:
    """Tag every image of `root` without a .json sidecar (or every image, with `overwrite`); returns counts."""
    from tqdm import tqdm

    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"root={str(root)!r} is not a folder.")
    files = list_folder(root)
    todo = [f for f in files if overwrite or f.json is None]
    counts = {"images": len(files), "tagged": 0, "had_sidecar": len(files) - len(todo), "failed": 0}
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="tagging", unit="batch"):
        batch, pixels = [], []
        for entry in todo[start:start + batch_size]:
            try:
                with open_image(root / entry.path, BOMB_PIXELS) as image:
                    upright = decode(image, exif_orientation(image))
                    pixels.append(tagger.preprocess(upright))
                batch.append(entry)
            except (ImageError, OSError) as e:
                counts["failed"] += 1
                log.warning("Skipped %s: %s", entry.path, e)
        if not batch:
            continue
        probs = tagger.probabilities(torch.stack(pixels))
        for entry, p in zip(batch, probs, strict=True):
            sidecar = root / (entry.json or str(Path(entry.path).with_suffix(".json")))
            atomic_write_json(sidecar, {**tagger.tags(p), "tagger": source or {}})
            counts["tagged"] += 1
    return counts


@hydra.main(config_path=str(CONF_DIR), config_name="tag", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if not cfg.root or not cfg.tagger.folder:
        raise ConfigError("Set root=<image folder> and tagger.folder=<WD-tagger folder with model.safetensors and "
                          "selected_tags.csv>.")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    settings = dict(cfg.tagger)
    tagger = Tagger(**settings, device=device)
    counts = tag_folder(cfg.root, tagger, batch_size=cfg.batch_size, overwrite=cfg.overwrite, progress=cfg.progress,
                        source={k: settings[k] for k in ("folder", "architecture", "general_threshold",
                                                         "character_threshold")})
    log.info("Tagging %s: %s", cfg.root, counts)
    print(counts)


if __name__ == "__main__":
    main()
