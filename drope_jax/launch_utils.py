"""Shared by the launch/ programs: flag parsing whose errors are one line that names the fix."""

from __future__ import annotations

import os
import re
import sys

import jax
from absl import flags

from drope_jax import paths
from drope_jax.errors import ConfigError

DEFAULT_COMPILATION_CACHE = str(paths.cache_root() / "jax_compilation_cache")


def define_compilation_cache_flag():
    return flags.DEFINE_string(
        "compilation_cache_dir", DEFAULT_COMPILATION_CACHE,
        "JAX's persistent compilation cache: a relaunch (after a preemption, say) loads the compiled programs "
        "instead of compiling them again. A local folder or gs://...; empty: off. JAX_COMPILATION_CACHE_DIR wins.")


def use_compilation_cache(path: str) -> None:
    """Turns JAX's persistent compilation cache on at ``path`` (unless JAX_COMPILATION_CACHE_DIR is set, or
    ``path`` is empty); programs that take under a second to compile are not stored."""
    if path and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", path)


def word_or_number(flag: str, value: str, words: tuple[str, ...]) -> str | float:
    """A flag that takes one of ``words`` or a number (``--temperature=fit|off|0.412``, say)."""
    if value in words:
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--{flag}={value!r}: give {', '.join(repr(w) for w in words)} or a number") from None


def parse_flags_or_exit(argv):
    """absl flag parsing; a misspelt ``--config.a.b`` exits with the closest valid key, and
    ``--config.a.b=None`` unsets a key (ml_collections' own parser cannot: it parses None as the key's type)."""
    given = list(argv)
    unsets = [a for a in argv[1:] if a.startswith("--config.") and a.endswith("=None")]
    argv = [a for a in argv if a not in unsets]
    try:
        remaining = flags.FLAGS(argv)
        for flag in unsets:
            *sections, name = flag.removeprefix("--config.").removesuffix("=None").split(".")
            node = flags.FLAGS["config"].value
            for section in sections:
                node = node[section]
            node[name] = None
        return remaining
    except (AttributeError, KeyError) as e:
        overrides = [a.split("=")[0] for a in given[1:] if a.startswith("--config.")]
        unknown_part = str(e).split("Did you mean")[0]
        bad = next((a for a in overrides if re.search(rf"\b{re.escape(a.rsplit('.', 1)[-1])}\b", unknown_part)),
                   " ".join(overrides))
        hint = re.search(r'Did you mean "([^"]+)"', str(e))
        suggestion = f'; did you mean "{hint.group(1)}"?' if hint else ""
        sys.exit(f"error: unknown config key in {bad}{suggestion}")
    except flags.Error as e:
        sys.exit(f"error: {e}")
