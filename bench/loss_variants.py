"""The LM head + loss, forward and backward, with the loss's forward written two ways, timed in one process.

  python bench/loss_variants.py [--batch=32] [--seq_len=1024] [--d_model=896] [--vocab=151936]

- `token_nll` (drope_jax/model/loss.py): log-sum-exp as a max, then a sum of exponentials, and the target's
  logit gathered: two or three passes over the [B, T, V] logits;
- `one_pass`: one variadic reduction carries (running max, sum of exponentials rescaled to it, target logit)
  along the vocabulary, as online softmax does: one pass over the logits, two exponentials per logit.

The backward is the same hand-written one in both. docs/performance.md's profile of the Table 4 step puts
the forward's two reductions at 6.7 ms of its 52 ms head; this says what one pass saves on the GPU before
loss.py changes. Both variants' values and gradients are checked against each other first.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax.model import loss

from timing import median_ms


def _one_pass_nll_and_lse(logits_BTV, targets_BT):
    logits = logits_BTV.astype(jnp.float32)
    is_target = jnp.arange(logits.shape[-1], dtype=targets_BT.dtype) == targets_BT[..., None]
    floor = jnp.finfo(jnp.float32).min  # finite, so that two empty accumulators combine to 0, not NaN

    def combine(a, b):
        (max_a, sum_a, target_a), (max_b, sum_b, target_b) = a, b
        top = jnp.maximum(max_a, max_b)
        return top, sum_a * jnp.exp(max_a - top) + sum_b * jnp.exp(max_b - top), target_a + target_b

    top_BT, sum_BT, target_BT = jax.lax.reduce(
        (logits, jnp.ones_like(logits), jnp.where(is_target, logits, 0.0)),
        (jnp.float32(floor), jnp.float32(0), jnp.float32(0)), combine, (logits.ndim - 1,))
    lse_BT = top_BT + jnp.log(sum_BT)
    return lse_BT - target_BT, lse_BT


@jax.custom_vjp
def one_pass_nll(logits_BTV, targets_BT):
    return _one_pass_nll_and_lse(logits_BTV, targets_BT)[0]


def _one_pass_fwd(logits_BTV, targets_BT):
    nll_BT, lse_BT = _one_pass_nll_and_lse(logits_BTV, targets_BT)
    return nll_BT, (logits_BTV, targets_BT, lse_BT)


one_pass_nll.defvjp(_one_pass_fwd, loss._token_nll_bwd)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--d_model", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151_936)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x_BTD = jnp.asarray(rng.standard_normal((args.batch, args.seq_len, args.d_model)), jnp.bfloat16)
    head_DV = jnp.asarray(0.02 * rng.standard_normal((args.d_model, args.vocab)), jnp.float32)
    targets_BT = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.seq_len)), jnp.int32)

    def head_loss(nll):
        def f(head_DV, x_BTD):
            logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(jnp.bfloat16))
            return jnp.mean(nll(logits_BTV, targets_BT))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    variants = {"token_nll": head_loss(loss.token_nll), "one_pass": head_loss(one_pass_nll)}
    (value, grads), (value_1p, grads_1p) = (variants[k](head_DV, x_BTD) for k in variants)
    np.testing.assert_allclose(value_1p, value, rtol=1e-5)
    for g, g_1p in zip(grads, grads_1p):
        np.testing.assert_allclose(np.asarray(g_1p, np.float32), np.asarray(g, np.float32), rtol=2e-2, atol=1e-6)
    print(f"{jax.devices()[0].device_kind} | batch {args.batch} x seq {args.seq_len} | d {args.d_model} "
          f"vocab {args.vocab} | loss {float(value):.4f} (both)")
    for name, fn in variants.items():
        print(f"  LM head + loss, fwd+bwd, {name:10s} {median_ms(fn, head_DV, x_BTD):8.1f} ms")


if __name__ == "__main__":
    main()
