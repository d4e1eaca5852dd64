"""The real architectures we build models from: diffusers / transformers configs shipped in
`illustrious/backbones/configs/<name>.json`, and the overrides a backbone config gives them (tiny widths, fewer
layers), checked against the shipped config before any model is built."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path

CONFIGS_DIR = Path(__file__).parent / "configs"


@cache
def architecture_config(name: str) -> dict:
    """A real architecture config shipped in `illustrious/backbones/configs/<name>.json`."""
    path = CONFIGS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))
        raise FileNotFoundError(f"No architecture config {name!r}; shipped configs: {known}")
    return json.loads(path.read_text())


# diffusers' UNet takes these per down block as well as one value for all blocks
PER_BLOCK_KEYS = frozenset({"attention_head_dim", "num_attention_heads", "transformer_layers_per_block",
                            "layers_per_block", "cross_attention_dim"})


KINDS = {bool: "true or false", int: "a whole number (int)", float: "a number", str: "a string", list: "a list"}


def _fits(value, like, per_block: bool) -> bool:
    """Whether an override has the kind of value the shipped architecture holds under its key."""
    if like is None:
        return True
    if isinstance(like, bool):
        return isinstance(value, bool)
    if isinstance(like, int):
        whole = isinstance(value, int) and not isinstance(value, bool)
        return whole or (per_block and isinstance(value, (list, tuple)) and all(_fits(v, like, False) for v in value))
    if isinstance(like, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(like, str):
        return isinstance(value, str)
    if isinstance(like, (list, tuple)):
        if not isinstance(value, (list, tuple)):  # one value for every block, where the UNet takes that
            return per_block and bool(like) and _fits(value, like[0], False)
        kinds = {type(v) for v in like}
        return len(kinds) != 1 or all(_fits(v, like[0], per_block) for v in value)
    return True


def architecture_with(name: str, overrides: Mapping | None, key: str) -> dict:
    """The shipped architecture `name` with the overrides a config gives under `key` (e.g. backbone.transformer),
    checked first: each override must be one of the architecture's settings and hold the same kind of value
    (a typo would be ignored, with a warning at most, and a wrong kind fails deep inside the model's code)."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    from illustrious.errors import ConfigError

    if isinstance(overrides, DictConfig):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    overrides = dict(overrides or {})
    shipped = architecture_config(name)
    for setting, value in overrides.items():
        if setting not in shipped:
            close = difflib.get_close_matches(setting, [k for k in shipped if not k.startswith("_")], n=3)
            hint = f" Did you mean {', '.join(f'{key}.{c}' for c in close)}?" if close else ""
            raise ConfigError(f"{key}.{setting} is not a setting of this architecture ({name}).{hint}")
        like = shipped[setting]
        if not _fits(value, like, setting in PER_BLOCK_KEYS):
            raise ConfigError(f"{key}.{setting}={value!r}: needs {KINDS.get(type(like), type(like).__name__)} like the "
                              f"architecture's own, e.g. {key}.{setting}={like!r}")
    merged = {**shipped, **overrides}
    blocks = merged.get("down_block_types")
    for setting in ({"block_out_channels", *PER_BLOCK_KEYS} & set(overrides)) if blocks else ():
        value = merged[setting]
        if isinstance(value, (list, tuple)) and len(value) != len(blocks):
            raise ConfigError(f"{key}.{setting}={list(value)} has {len(value)} entries, but the architecture has "
                              f"{len(blocks)} down blocks ({key}.down_block_types): give one entry per block.")
    return merged
