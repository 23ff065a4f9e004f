"""Splash attention: the Pallas TPU kernel for causal and sliding-window self-attention.

Pallas kernels do not partition automatically, so the kernel runs under ``jax.shard_map`` over the
current mesh with the sharding table's layout (batch over data x fsdp, heads over tensor). Grouped
queries need no copies: the kernel maps query head n to key/value head n // (N / K), as
``jax.nn.dot_product_attention`` does. Packed documents use the kernel's segment ids. Off TPU
(tests on CPU) the same kernel runs in Pallas interpret mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from drope_jax.sharding import logical_to_spec, target_platform

BLOCK = 128  # the kernel's tiles are multiples of the 128 TPU lanes


def supports(seq_len: int) -> bool:
    return seq_len % BLOCK == 0


def _kernel(num_heads: int, seq_len: int, window: int | None, interpret: bool):
    """Built inside each trace: its mask tables become constants of that trace (a cached one would leak tracers)."""
    shape = (seq_len, seq_len)
    # LocalMask's (left, right) window: `window` keys in all, the query's own included; none in the future.
    mask = sa.CausalMask(shape) if window is None else sa.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    b = next(size for size in (512, 256, 128) if seq_len % size == 0)
    sizes = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sa.make_splash_mha(sa.MultiHeadMask([mask] * num_heads), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret)


def splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT=None, window: int | None = None):
    """Causal self-attention (queries and keys of one sequence), scale head_dim^-0.5."""
    t = q_BTNH.shape[1]
    if not supports(t):
        raise ValueError(f"splash attention needs a sequence length divisible by {BLOCK}, got {t}")
    interpret = target_platform() != "tpu"
    q_BTNH = (q_BTNH * q_BTNH.shape[-1] ** -0.5).astype(q_BTNH.dtype)  # the kernel does not scale

    def attend(q_BTNH, k_BTKH, v_BTKH, *segment_ids):
        kernel = _kernel(q_BTNH.shape[2], t, window, interpret)
        q_BNTH, k_BKTH, v_BKTH = (x.swapaxes(1, 2) for x in (q_BTNH, k_BTKH, v_BTKH))
        if segment_ids:
            out_BNTH = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(q=s, kv=s)))(
                q_BNTH, k_BKTH, v_BKTH, segment_ids[0])
        else:
            out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKTH, v_BKTH)
        return out_BNTH.swapaxes(1, 2)

    args = (q_BTNH, k_BTKH, v_BTKH) + (() if segment_ids_BT is None else (segment_ids_BT,))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return attend(*args)
    q_spec = logical_to_spec(("batch", "seq", "act_heads", None), q_BTNH.shape, mesh)
    kv_spec = logical_to_spec(("batch", "seq", "act_kv_heads", None), k_BTKH.shape, mesh)
    if kv_spec[2] != q_spec[2]:
        # kv heads that do not split like the query heads: give every query head its own copy
        group = q_BTNH.shape[2] // k_BTKH.shape[2]
        args = (q_BTNH, jnp.repeat(k_BTKH, group, axis=2), jnp.repeat(v_BTKH, group, axis=2)) + args[3:]
        kv_spec = q_spec
    specs = (q_spec, kv_spec, kv_spec) + ((jax.sharding.PartitionSpec(q_spec[0], None),) if len(args) == 4 else ())
    return jax.shard_map(attend, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)
