"""Fingerprints of a checkpoint's contents, to prove on restore that the bytes read are the bytes saved.

An array's fingerprint is two 32-bit sums over its elements' bit patterns, computed where the array lives:
each device sums its shard and XLA adds the partial sums, so it costs a reduction, not a gather. Integer
addition modulo 2**32 does not depend on its order, so the fingerprint is the same on every mesh, sharding,
process count and platform. With ``w_i`` the bit pattern of element ``i`` (flat, row-major index):

- ``sum w_i * (2i + 1)``: a flipped bit changes it by an odd multiple of ``2**k`` (k < 32), never 0;
- ``sum fmix(w_i ^ fmix(i + GOLDEN))`` (murmur3's finalizer, a bijection): moved, swapped or random bytes
  change it unpredictably, so two lanes miss random damage with a chance of about 2**-64.

Files that are not arrays (the data iterator's state, the run's metadata) are fingerprinted by SHA-256.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax.errors import ConfigError

FORMAT = 1  # bump when the fingerprint of an array changes; a record of another format is refused
_GOLDEN = np.uint32(0x9E3779B9)
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


class Mismatch(ConfigError):
    """A checkpoint's contents differ from the fingerprints saved with it."""


def _fmix32(h):
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x):
    """Each element's bit pattern as a uint32."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize not in _UNSIGNED:
        raise TypeError(f"cannot fingerprint a {x.dtype} array (elements of 1, 2 or 4 bytes only)")
    return jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)


def _flat_index(shape):
    """The row-major position of each element, modulo 2**32, built per dimension so each shard makes its own."""
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for dim in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride % 2**32)
        stride *= shape[dim]
    return index


def _array_lanes(x):
    w, i = _words(x), _flat_index(x.shape)
    linear = jnp.sum(w * (i * np.uint32(2) + np.uint32(1)), dtype=jnp.uint32)
    mixed = jnp.sum(_fmix32(w ^ _fmix32(i + _GOLDEN)), dtype=jnp.uint32)
    return jnp.stack([linear, mixed])


@jax.jit
def _lanes(leaves):
    return jnp.stack([_array_lanes(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def leaf_paths(tree) -> list[str]:
    """The ``params/blocks/...`` path of each leaf, in ``jax.tree.leaves`` order."""
    return [jax.tree_util.keystr(path, simple=True, separator="/")
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def of_arrays(tree) -> dict[str, dict]:
    """``{path: {"dtype", "shape", "fingerprint"}}`` for every array of ``tree`` (sharded jax Arrays, on
    any number of processes: the result is the same everywhere)."""
    leaves = jax.tree.leaves(tree)
    lanes = _lanes(leaves)
    lanes = np.asarray(lanes.addressable_data(0))  # replicated: every process holds the whole result
    return {path: {"dtype": str(x.dtype), "shape": list(x.shape), "fingerprint": f"{a:08x}{b:08x}"}
            for path, x, (a, b) in zip(leaf_paths(tree), leaves, lanes)}


def differing(saved: dict[str, dict], tree) -> list[str]:
    """Paths of the arrays of ``tree`` whose fingerprint, dtype or shape differ from ``saved``'s, or that
    ``saved`` lacks."""
    now = of_arrays(tree)
    return [path for path, record in now.items() if saved.get(path) != record]


def of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def of_json(value) -> str:
    """The fingerprint of a JSON value, the same before it is written and after it is read back."""
    return of_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
