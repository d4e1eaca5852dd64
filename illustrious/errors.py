"""Errors that tell the user which setting is wrong and what to do about it."""


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any model is built or data is read."""
