"""Errors every part of the package raises: the bottom of the import graph."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key to fix."""
