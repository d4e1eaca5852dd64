"""`python -m illustrious.export checkpoint=... format=... out=...`: a training checkpoint in the formats that
ComfyUI, A1111/Forge and diffusers load (see illustrious/weights/export.py and conf/export.yaml)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from illustrious.config import CONF_DIR

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    from illustrious.weights.export import export_checkpoint

    path = export_checkpoint(cfg.checkpoint, cfg.format, cfg.out, dtype=cfg.dtype, overwrite=cfg.overwrite,
                             allow_pickle=cfg.allow_pickle, title=cfg.title)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
