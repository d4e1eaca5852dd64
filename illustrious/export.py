"""`python -m illustrious.export checkpoint=... format=... out=...`: a training checkpoint in the formats that
ComfyUI, A1111/Forge and diffusers load (see illustrious/weights/export.py and conf/export.yaml)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from illustrious.config import CONF_DIR
from illustrious.errors import reported_config_errors, require_checkpoint_file

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    from illustrious.weights.export import export_checkpoint
    from illustrious.weights.rebuild import config_dirs_of

    with reported_config_errors():  # one clear message, no stack trace (HYDRA_FULL_ERROR=1 for the trace)
        require_checkpoint_file(cfg.checkpoint)
        path = export_checkpoint(cfg.checkpoint, cfg.format, cfg.out, dtype=cfg.dtype, overwrite=cfg.overwrite,
                                 allow_pickle=cfg.allow_pickle, title=cfg.title, config_dirs=config_dirs_of(cfg))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
