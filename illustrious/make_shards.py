"""`python -m illustrious.make_shards data.root=/data/anime out=/data/shards`

Writes the training images of a folder (scanned, filtered and captioned as `data=folder` does) as
WebDataset tar shards with an `index.json`, for `data=webdataset data.urls=/data/shards` on a cluster.
`encoding=original` copies each file's bytes; `jpg`, `webp` or `png` store upright RGB within the pixel
budget instead (smaller shards, less decoding on the cluster). Rerun after an interruption: shards already
written for the same images are kept.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from illustrious.config import CONF_DIR, instantiate
from illustrious.errors import ConfigError


def make_shards(cfg: DictConfig) -> dict:
    """The command as a plain function; returns the shard index."""
    from illustrious.data.storage.shard_writer import ENCODINGS, write_shards

    if not cfg.get("out"):
        raise ConfigError("Set out=/path/to/shards: the folder the shards and index.json go to.")
    if cfg.encoding not in ENCODINGS:
        raise ConfigError(f"encoding={cfg.encoding!r}: must be one of {', '.join(ENCODINGS)}.")
    datamodule = instantiate(cfg.data)
    datamodule.check()
    return write_shards(datamodule.root, datamodule.selection.table, Path(cfg.out).expanduser(), datamodule.settings,
                        shard_size=cfg.shard_size, encoding=cfg.encoding, quality=cfg.quality, progress=cfg.progress)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="make_shards")
def main(cfg: DictConfig) -> None:
    make_shards(cfg)


if __name__ == "__main__":
    main()
