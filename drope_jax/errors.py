"""Errors every part of the package raises: the bottom of the import graph."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key to fix."""


def first_line(error: BaseException | str, limit: int = 400) -> str:
    """The first line of an error's message (XLA's run to pages), at most ``limit`` characters."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


def out_of_device_memory(e: BaseException) -> bool:
    """Whether XLA raised ``e`` because a program needs more device memory than there is: XLA:TPU refuses to
    compile it ("Ran out of memory in memory space hbm"), a GPU fails to allocate ("Out of memory while trying
    to allocate")."""
    return "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e)
