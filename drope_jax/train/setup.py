"""What a run's config builds before anything trains: the plan, the mesh, the model spec, the optimizer
and the state's shardings, and from them each phase's compiled train step. Training, the benchmark and
the AOT compile all start here."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from drope_jax import sharding
from drope_jax.model.state import init_params, model_spec
from drope_jax.run_config import Plan, make_plan
from drope_jax.train import optim
from drope_jax.train.faults import Faults
from drope_jax.train.step import init_state, jit_train_step, make_train_step, state_shardings


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every compiled train step of a run is built from (shared with the benchmark and AOT compile)."""

    config: Any
    plan: Plan
    mesh: jax.sharding.Mesh
    spec: Any
    tx: Any
    state_sh: Any

    def lr_fn(self, step):
        return optim.lr_at(step, optim_cfg=self.config.optim, total_steps=self.plan.total_steps,
                           flip_step=self.plan.flip_step, drope_cfg=self.config.drope)

    def abstract_state(self):
        """ShapeDtypeStructs of the train state, placed on the mesh."""
        abstract = jax.eval_shape(functools.partial(init_state, tx=self.tx), self.spec.abstract_params)
        return sharding.with_shardings(abstract, self.state_sh)

    def phase_step(self, phase: str):
        """The jitted train step of one phase: RoPE before the flip, NoPE after it."""
        fn = make_train_step(self.spec, self.tx, self.lr_fn, pos=self.plan.phase_pos(phase),
                             use_qk_norm=self.plan.uses_qk_norm(phase), grad_accum=self.config.train.grad_accum,
                             faults=Faults.from_config(self.config.faults))
        return jit_train_step(fn, self.state_sh, self.mesh)

    def fresh_state(self, params=None):
        params = init_params(self.spec, self.config.train.seed, self.mesh) if params is None else params
        return jax.jit(functools.partial(init_state, tx=self.tx), out_shardings=self.state_sh)(params)


def make_setup(config, mesh=None) -> Setup:
    """Validates the config (raising ConfigError before anything compiles) and builds the pieces."""
    mesh = sharding.make_mesh(**config.mesh) if mesh is None else mesh
    plan = make_plan(config, num_data_devices=mesh.shape["data"] * mesh.shape["fsdp"])
    spec = model_spec(plan.model)
    tx = optim.make_optimizer(config.optim, starts_at_flip=_is_qk_norm if plan.qk_norm_at_flip else None)
    return Setup(config, plan, mesh, spec, tx, state_shardings(spec, tx, mesh))


def _is_qk_norm(path: str) -> bool:
    return "q_norm" in path or "k_norm" in path

