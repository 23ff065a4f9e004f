"""The one timing rule of the benches: the median of ``calls`` calls after ``warmup`` untimed ones."""

import statistics
import time

import jax


def median_ms(fn, *args, calls: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``fn(*args)`` in ms, each call waited on (``jax.block_until_ready``)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
