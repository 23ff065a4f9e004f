"""Every test runs on CPU with 8 simulated devices, so each sharding path runs in CI.

The tests, and the programs they start, compile the same few programs many times: one persistent compilation
cache for the session (fresh, unless JAX_COMPILATION_CACHE_DIR is set) compiles each once. With pytest-xdist
(`-n 2`) the workers inherit this process's environment, so they share the cache."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ["JAX_PLATFORMS"] = "cpu"
# The tests compile some 2,000 small programs, which run for less time than LLVM takes to optimize them: without
# its optimizations the suite took 6 min 37 s on the 2-core machine, not 8 min 22 s (2026-12-05). A test whose
# program runs long asks for them back in its jit (compiler_options={"xla_backend_optimization_level": 2}).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="drope_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

jax.config.update("jax_platforms", "cpu")
assert jax.device_count() == 8, "tests need 8 simulated CPU devices; import jax only after conftest"


def _use_compilation_cache(enabled: bool) -> None:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()  # JAX decides whether to use the cache once, until reset


@pytest.fixture
def no_compilation_cache():
    """For tests that count compilations: a program found in the cache is not compiled."""
    _use_compilation_cache(False)
    yield
    _use_compilation_cache(True)
