"""Injected numerical faults (``config.faults``), so tests and drills can prove the fault handling.

Steps are numbered as the logs number them: step s is the update that produces the state of step s.
Empty in real runs, where the train step compiles exactly as without this module.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Faults:
    nonfinite_loss_at: tuple[int, ...] = ()
    nonfinite_grads_at: tuple[int, ...] = ()
    nonfinite_params_at: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, faults_cfg) -> Faults | None:
        faults = cls(**{k: tuple(v) for k, v in dict(faults_cfg).items()})
        return faults if any(dataclasses.astuple(faults)) else None

    def corrupt_loss_and_grads(self, step, loss, grads):
        loss = jnp.where(_at(step, self.nonfinite_loss_at), jnp.nan, loss)
        bad = _at(step, self.nonfinite_grads_at)
        return loss, jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)

    def corrupt_params(self, step, params):
        """One parameter tensor turns NaN, as an overflowing update would leave it."""
        leaves, treedef = jax.tree.flatten(params)
        leaves[0] = jnp.where(_at(step, self.nonfinite_params_at), jnp.nan, leaves[0]).astype(leaves[0].dtype)
        return jax.tree.unflatten(treedef, leaves)


def _at(step, steps: tuple[int, ...]):
    return jnp.isin(step, jnp.asarray(steps, jnp.int32)) if steps else jnp.bool_(False)
