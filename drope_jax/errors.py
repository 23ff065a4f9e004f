"""Errors every part of the package raises: the bottom of the import graph."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key to fix."""


def out_of_device_memory(e: BaseException) -> bool:
    """Whether XLA raised ``e`` because a program needs more device memory than there is: XLA:TPU refuses to
    compile it ("Ran out of memory in memory space hbm"), a GPU fails to allocate ("Out of memory while trying
    to allocate")."""
    return "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e)
