"""The one timing rule of the benches (the median of ``calls`` calls after ``warmup`` untimed ones), a kernel
sweep's checked, timed row, and a sweep of kernels against XLA."""

import json
import statistics
import time

import jax
import jax.numpy as jnp


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


@jax.jit
def _max_errors(got, want):
    """[(max |got - want|, max |want|)] for each array of two pytrees, on the device: float32 copies of a
    gradient would not fit the host."""
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return [(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32))), jnp.max(jnp.abs(w))) for g, w in pairs]


def timed_row(name, fn, args, bytes_moved, want, rows, f32_rtol=1e-5):
    """Checks each array of ``fn(*args)`` against ``want``'s (bf16 to 1e-2 of its largest magnitude, float32 to
    ``f32_rtol``: 1e-5 where only the order of a float32 sum may differ), then times it and prints its rate over
    ``bytes_moved``; appends (ms, name) to ``rows``. A failure to compile or to match costs the row, not the
    sweep."""
    try:
        for i, ((error, scale), w) in enumerate(zip(_max_errors(fn(*args), want), jax.tree.leaves(want), strict=True)):
            tolerance = (f32_rtol if w.dtype == jnp.float32 else 1e-2) * float(scale)  # bf16 roundings differ
            assert float(error) <= tolerance, f"result {i}: max error {float(error):.3g} over {tolerance:.3g}"
        ms = median_ms(fn, *args)
    except Exception as e:  # noqa: BLE001
        print(f"  {name:50s} failed: {str(e).splitlines()[0][:160]}", flush=True)
        return
    print(f"  {name:50s} {ms:7.2f} ms  {bytes_moved / ms / 1e9:5.2f} TB/s", flush=True)
    rows.append((ms, name))


def sweep(label, xla, kernels, args, bytes_moved, f32_rtol=1e-5):
    """``xla(*args)`` and each of ``kernels`` ({row name: fn}) timed, each checked against XLA's result first; the
    fastest printed last as ``BEST label [ms, name]``."""
    print(f"{label}:", flush=True)
    want, rows = xla(*args), []
    timed_row("XLA", xla, args, bytes_moved, want, rows, f32_rtol)
    for name, fn in kernels.items():
        timed_row(name, fn, args, bytes_moved, want, rows, f32_rtol)
    print(f"BEST {label} " + json.dumps(min(rows)), flush=True)
