"""The one train step. The real run, the benchmark and the AOT compile all build it here.

A train state is a plain dict: ``{"params", "opt_state", "step"}``. A step whose loss or gradient is
not finite leaves the state unchanged (the update is skipped) and reports it in ``nonfinite``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from drope_jax import sharding
from drope_jax.model.loss import token_nll
from drope_jax.model.positions import PosEncoding
from drope_jax.model.state import ModelSpec, apply


def init_state(params: dict, tx: optax.GradientTransformation) -> dict:
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def state_shardings(spec: ModelSpec, tx, mesh):
    """Shardings of the whole train state: optimizer moments follow their parameters."""
    param_sh = spec.shardings(mesh)
    abstract = jax.eval_shape(lambda p: init_state(p, tx), spec.abstract_params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # A moment's path ends with its parameter's (…mu['blocks']['attn']['q_DNH']), also inside optimizer groups.
    params = {jax.tree_util.keystr(path): (p.shape, sh) for (path, p), sh in
              zip(jax.tree_util.tree_flatten_with_path(spec.abstract_params)[0], jax.tree.leaves(param_sh))}

    def follow(path, leaf):
        key = jax.tree_util.keystr(path)
        return next((sh for name, (shape, sh) in params.items() if key.endswith(name) and shape == leaf.shape),
                    replicated)

    opt_sh = jax.tree_util.tree_map_with_path(follow, abstract["opt_state"])
    return {"params": param_sh, "opt_state": opt_sh, "step": replicated}


def loss_fn(params, batch, *, spec: ModelSpec, pos: PosEncoding, use_qk_norm: bool):
    """Mean next-token loss of a batch ``{"tokens": [B, T+1]}`` (plus ``segment_ids``/``positions``
    of the same shape when documents are masked from each other)."""
    inputs = {k: v[:, :-1] for k, v in batch.items()}
    logits_BTV = apply(spec, params, inputs["tokens"], pos, use_qk_norm=use_qk_norm,
                       positions_BT=inputs.get("positions"), segment_ids_BT=inputs.get("segment_ids"))
    with jax.named_scope("loss"):
        return jnp.mean(token_nll(logits_BTV, batch["tokens"][:, 1:], spec.cfg.loss_backend))


def update_if_finite(tx, grads, opt_state, params, finite):
    """The optimizer's update and state, or a zero update and the state unchanged where ``finite`` is false.
    A cond, not a select (``jnp.where`` over both): compiled for Table 4 on a v5p-8 at grad_accum 4, the select
    needs 0.9 GiB more a chip (95.31 GiB, which does not fit, against 94.43), whether it selects the update or the
    new parameters and optimizer state. On GPU the cond copies its predicate to the host, which waits for it;
    bench/step_variants.py's ``select_skip`` times the select there."""
    return jax.lax.cond(finite, lambda: tx.update(grads, opt_state, params),
                        lambda: (jax.tree.map(jnp.zeros_like, params), opt_state))


def make_train_step(spec: ModelSpec, tx, lr_fn, *, pos: PosEncoding, use_qk_norm: bool, grad_accum: int = 1,
                    faults=None):
    """A pure ``(state, batch) -> (state, metrics)``; see ``loss_fn`` for the batch. ``faults``: a
    ``faults.Faults`` whose non-finite values are injected (tests and drills only)."""
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, spec=spec, pos=pos, use_qk_norm=use_qk_norm))

    def step(state, batch):
        params = state["params"]
        if grad_accum == 1:
            loss, grads = grad_fn(params, batch)
        else:
            # Microbatch a takes rows a, a+A, a+2A, ...: every device keeps an equal share of each one.
            micro_batches = jax.tree.map(lambda x: x.reshape(-1, grad_accum, x.shape[-1]).swapaxes(0, 1), batch)

            def accumulate(carry, micro_batch):
                loss_sum, grad_sum = carry
                micro_batch = jax.tree.map(lambda x: sharding.constrain(x, ("batch", None)), micro_batch)
                loss, grads = grad_fn(params, micro_batch)
                return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros(()), zeros), micro_batches)
            loss, grads = loss / grad_accum, jax.tree.map(lambda g: g / grad_accum, grads)

        if faults is not None:
            loss, grads = faults.corrupt_loss_and_grads(state["step"] + 1, loss, grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        lr = lr_fn(state["step"])
        updates, opt_state = update_if_finite(tx, grads, state["opt_state"], params, finite)
        new_params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, updates)
        if faults is not None:
            new_params = faults.corrupt_params(state["step"] + 1, new_params)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "nonfinite": ~finite}
        return new_state, metrics

    return step


def jit_train_step(step_fn, state_sh, mesh):
    """Jit with explicit shardings; the old state is donated."""
    return jax.jit(step_fn, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sh, None), donate_argnums=(0,))
