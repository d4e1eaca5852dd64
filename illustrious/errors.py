"""Errors that tell the user which setting is wrong and what to do about it."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any model is built or data is read."""


class PickleRefused(ConfigError):
    """A pickle file named by a setting, refused because `allow_pickle` is off (illustrious.weights.safe_read)."""


class MissingPathError(ConfigError, FileNotFoundError):
    """A setting names a file or folder that does not exist. Reported like any configuration error, and still a
    FileNotFoundError for code that catches that."""


def require_checkpoint_file(value) -> None:
    """The `checkpoint=` setting of the sample and export commands names an existing file."""
    from pathlib import Path

    path = Path(str(value)).expanduser()
    if path.is_dir():  # an FSDP run's sharded checkpoint is a folder
        raise ConfigError(f"checkpoint={value!r} is a folder, not a checkpoint file; if it is an FSDP run's sharded "
                          f"checkpoint, make one file of it first: python -m illustrious.consolidate {value} "
                          "<file.safetensors> --allow-pickle (that reads the folder's pickled index: only for a folder "
                          "you trust)")
    if not path.is_file():
        raise MissingPathError(f"checkpoint={value!r} does not exist: give a training checkpoint, e.g. "
                               "checkpoint=outputs/<date>/<time>/checkpoints/last.safetensors")


def config_error_message(error: BaseException) -> str | None:
    """The one-line-per-problem message for a configuration error; None for any other exception."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or str(error).splitlines()[0]
        return f"{key} is required: set {key}=... on the command line."
    if "lightning" in sys.modules:  # Lightning's own checks of trainer.* settings
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if isinstance(error, MisconfigurationException):
            return f"trainer settings: {error}"
    return None


@contextmanager
def reported_config_errors():
    """Around a command's body: a configuration error prints its message alone (no stack trace) to stderr
    and exits with status 1. `HYDRA_FULL_ERROR=1` lets it propagate with the full trace, as Hydra does."""
    try:
        yield
    except Exception as error:
        message = config_error_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Configuration error: {message}\n(HYDRA_FULL_ERROR=1 shows the full stack trace.)", file=sys.stderr)
        raise SystemExit(1) from None
