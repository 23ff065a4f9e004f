"""drope_jax: train with RoPE, drop it, recalibrate, read far past the training context."""

import flax

# Parameters are placed by our own sharding table (drope_jax.sharding), not at construction.
flax.config.update("flax_always_shard_variable", False)
