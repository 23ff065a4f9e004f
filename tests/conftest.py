"""Every test runs on CPU with 8 simulated devices, so each sharding path runs in CI."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
assert jax.device_count() == 8, "tests need 8 simulated CPU devices; import jax only after conftest"
