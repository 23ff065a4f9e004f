"""Next-token cross-entropy with a hand-written gradient.

The loss is memory-bound on a GPU, so its cost is the bytes it moves. Left to autodiff, XLA stores a
float32 copy of the [B, T, V] logits for the backward pass (6.4 GB at 32 x 1024 tokens and a 49,152
vocab) and makes three passes over it. Here the backward is one pass: it reads the logits in their
own dtype and writes softmax - one_hot in that dtype (on an H100 the 0.5B step went from 205.8 to
201.9 ms and from 45.9 to 42.9 GiB; docs/performance.md). tests/test_loss.py checks value and
gradient against autodiff.

On one GPU the passes run as Pallas kernels (drope_jax/model/loss_kernels.py: the forward reads the logits
once, not twice): the Table 4 step on one H200 went from 217.4 to 212.9 ms (docs/performance.md).
``config.model.loss_backend`` picks: "auto" takes the kernels on a single GPU, "xla" never, "pallas" always
(Pallas's interpreter off the GPU, as the tests run it). A kernel does not partition by itself, so on a mesh
of several devices it runs under ``jax.shard_map`` with the sharding table's layout, and needs each row of
logits whole on its device (no vocabulary split over the tensor axis). "auto" keeps XLA there: wrapped in
shard_map even on a one-device mesh, the kernels saved nothing (217.4 against 216.4 ms), and on several GPUs
they have not been measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drope_jax import sharding
from drope_jax.model import loss_kernels
from drope_jax.sharding import logical_to_spec


def nll_and_lse(logits_BTV, targets_BT):
    """(per-token NLL [B, T], log-sum-exp [B, T]) in float32: a max, a sum of exponentials, the target gathered."""
    logits = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
    return lse_BT - target_logit_BT, lse_BT


def nll_backward(residuals, d_nll_BT):
    """d nll / d logits = softmax - one_hot(target), scaled by the incoming gradient."""
    logits_BTV, targets_BT, lse_BT = residuals
    probs_BTV = jnp.exp(logits_BTV.astype(jnp.float32) - lse_BT[..., None])
    is_target_BTV = targets_BT[..., None] == jnp.arange(logits_BTV.shape[-1], dtype=targets_BT.dtype)
    d_logits_BTV = (probs_BTV - is_target_BTV) * d_nll_BT[..., None]
    return d_logits_BTV.astype(logits_BTV.dtype), None


def custom_nll(forward, backward):
    """A per-token NLL(logits [B, T, V], targets [B, T]) -> [B, T] whose forward is ``forward`` (returning the NLL
    and the log-sum-exp) and whose backward is ``backward`` (given the logits, targets and log-sum-exp)."""
    @jax.custom_vjp
    def nll(logits_BTV, targets_BT):
        return forward(logits_BTV, targets_BT)[0]

    def nll_fwd(logits_BTV, targets_BT):
        nll_BT, lse_BT = forward(logits_BTV, targets_BT)
        return nll_BT, (logits_BTV, targets_BT, lse_BT)

    nll.defvjp(nll_fwd, backward)
    return nll


xla_token_nll = custom_nll(nll_and_lse, nll_backward)
pallas_token_nll = custom_nll(loss_kernels.nll_and_lse, loss_kernels.nll_backward)

_LOGITS = ("batch", "seq", "act_vocab")


def loss_implementation(backend: str, logits_shape) -> str:
    """"xla" or "pallas" for logits of ``logits_shape`` in the computation being traced."""
    implementation = sharding.kernel_implementation(backend, "config.model.loss_backend")
    mesh = jax.sharding.get_abstract_mesh()
    if backend == "pallas" and not mesh.empty and logical_to_spec(_LOGITS, logits_shape, mesh)[2] is not None:
        raise ValueError("the Pallas loss needs whole rows of logits on each device, but the mesh's tensor axis "
                         "splits the vocabulary: set config.model.loss_backend to 'xla' or 'auto'")
    return implementation


def token_nll(logits_BTV, targets_BT, backend: str = "auto"):
    """Per-token negative log-likelihood [B, T], computed in float32 from logits of any float dtype."""
    if loss_implementation(backend, logits_BTV.shape) == "xla":
        return xla_token_nll(logits_BTV, targets_BT)
    return sharding.on_each_device(pallas_token_nll, (logits_BTV, targets_BT), (_LOGITS, _LOGITS[:2]), _LOGITS[:2])
