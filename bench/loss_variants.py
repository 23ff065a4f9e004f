"""The LM head + loss, forward and backward, with the loss written four ways, timed in one process.

  python bench/loss_variants.py [--batch=32] [--seq_len=1024] [--d_model=896] [--vocab=151936]

The forward's log-sum-exp, either way followed by gathering the target's logit:
- `two_pass` (drope_jax/model/loss.py's token_nll): a max, then a sum of exponentials: two passes over the
  [B, T, V] logits;
- `one_pass`: one variadic reduction carries (running max, sum of exponentials rescaled to it) along the
  vocabulary, as online softmax does: one pass, two exponentials per logit.
The backward's softmax - one_hot:
- `iota` (token_nll's): one pass that compares every logit's vocabulary index with the target's, an index
  recovered from the flat position by integer division, per element;
- `scatter`: the pass writes softmax alone, and the target's entry of each row is set afterwards, to the same
  value computed in float32 (so the gradient is the same, bit for bit, where XLA computes exp alike).

Both, and the backward, as the Pallas (Triton) kernels of drope_jax/model/loss_kernels.py: `pallas lse` reads
each row once (online softmax, a block of the vocabulary at a time), `pallas backward` reads and writes it once;
both together are loss.pallas_token_nll, what the train step runs on GPU.

docs/performance.md's profile of the Table 4 step puts the forward's reductions at 6.7 ms and the backward's
pass at 6.9 ms of its 52 ms head; this says what each change saves. Every variant's value and gradients are
checked against the XLA passes' (loss.xla_token_nll) first. On one H200 (2026-12-04) none of the XLA rewrites
saved time (52.4 ms against 54.2 to 55.6 ms); the Pallas kernels did (docs/performance.md).
"""


import jax
import jax.numpy as jnp
import numpy as np
from head_shape import parse_head_shape

from drope_jax.model import loss, loss_kernels

from timing import median_ms


def _one_pass_nll_and_lse(logits_BTV, targets_BT):
    logits = logits_BTV.astype(jnp.float32)
    floor = jnp.finfo(jnp.float32).min  # finite, so that two empty accumulators combine to 0, not NaN

    def combine(a, b):
        (max_a, sum_a), (max_b, sum_b) = a, b
        top = jnp.maximum(max_a, max_b)
        return top, sum_a * jnp.exp(max_a - top) + sum_b * jnp.exp(max_b - top)

    top_BT, sum_BT = jax.lax.reduce((logits, jnp.ones_like(logits)), (jnp.float32(floor), jnp.float32(0)),
                                    combine, (logits.ndim - 1,))
    lse_BT = top_BT + jnp.log(sum_BT)
    target_logit_BT = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
    return lse_BT - target_logit_BT, lse_BT


def _scatter_bwd(residuals, d_nll_BT):
    logits_BTV, targets_BT, lse_BT = residuals
    probs_BTV = jnp.exp(logits_BTV.astype(jnp.float32) - lse_BT[..., None])
    d_logits_BTV = (probs_BTV * d_nll_BT[..., None]).astype(logits_BTV.dtype)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0].astype(jnp.float32)
    d_target_BT = ((jnp.exp(target_logit_BT - lse_BT) - 1) * d_nll_BT).astype(logits_BTV.dtype)
    b_BT, t_BT = jnp.indices(targets_BT.shape)
    return d_logits_BTV.at[b_BT, t_BT, targets_BT].set(d_target_BT), None


VARIANTS = {"two_pass + iota (XLA)": loss.xla_token_nll,
            "one_pass + iota": loss.custom_nll(_one_pass_nll_and_lse, loss.nll_backward),
            "two_pass + scatter": loss.custom_nll(loss.nll_and_lse, _scatter_bwd),
            "one_pass + scatter": loss.custom_nll(_one_pass_nll_and_lse, _scatter_bwd),
            "pallas lse + iota": loss.custom_nll(loss_kernels.nll_and_lse, loss.nll_backward),
            "two_pass + pallas backward": loss.custom_nll(loss.nll_and_lse, loss_kernels.nll_backward),
            "pallas lse + pallas backward": loss.pallas_token_nll}


def main():
    args = parse_head_shape(__doc__)
    rng = np.random.default_rng(0)
    x_BTD = jnp.asarray(rng.standard_normal((args.batch, args.seq_len, args.d_model)), jnp.bfloat16)
    head_DV = jnp.asarray(0.02 * rng.standard_normal((args.d_model, args.vocab)), jnp.float32)
    targets_BT = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.seq_len)), jnp.int32)

    def head_loss(nll):
        def f(head_DV, x_BTD):
            logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(jnp.bfloat16))
            return jnp.mean(nll(logits_BTV, targets_BT))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    variants = {name: head_loss(nll) for name, nll in VARIANTS.items()}
    value, grads = variants["two_pass + iota (XLA)"](head_DV, x_BTD)
    print(f"{jax.devices()[0].device_kind} | batch {args.batch} x seq {args.seq_len} | d {args.d_model} "
          f"vocab {args.vocab} | loss {float(value):.4f}")
    for name, fn in variants.items():
        try:  # a kernel the GPU's compiler refuses costs its row, not the others
            other_value, other_grads = fn(head_DV, x_BTD)
        except Exception as e:  # noqa: BLE001
            print(f"  LM head + loss, fwd+bwd, {name:28s} failed: {str(e).splitlines()[0][:200]}")
            continue
        np.testing.assert_allclose(other_value, value, rtol=1e-5, err_msg=name)
        for g, other in zip(grads, other_grads):
            g, other = np.asarray(g, np.float32), np.asarray(other, np.float32)  # bf16 roundings may differ
            np.testing.assert_allclose(other, g, rtol=2e-2, atol=1e-2 * np.abs(g).max(), err_msg=name)
        print(f"  LM head + loss, fwd+bwd, {name:28s} {median_ms(fn, head_DV, x_BTD):8.1f} ms")


if __name__ == "__main__":
    main()
