"""Where a real backbone's weights come from: a local diffusers folder, checked before anything loads."""

from __future__ import annotations

from pathlib import Path

from illustrious.errors import ConfigError


def diffusers_folder(weights: str | None, parts: tuple[str, ...], backbone: str, example: str) -> Path:
    """The folder at `weights` if it has every subfolder in `parts`; otherwise a ConfigError saying what to set."""
    layout = ", ".join(p + "/" for p in parts)
    if weights is None:
        raise ConfigError(
            f"backbone={backbone} needs pretrained weights: set backbone.weights=/path/to/{example}, a local "
            f"diffusers folder ({layout}). Nothing is downloaded. "
            f"To train without weights on a CPU, use backbone={backbone}_tiny."
        )
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise ConfigError(f"backbone.weights={weights!r} is not a folder; expected a local {backbone} diffusers folder.")
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise ConfigError(f"{root} has no {', '.join(p + '/' for p in missing)} subfolder(s); a {backbone} diffusers "
                          f"folder needs {layout}.")
    return root
