"""DroPE runs branched from a RoPE run: the tail starts at the RoPE run's checkpoint at the flip.

A RoPE run and a DroPE run of one config see the same batches under the same learning rate up to
the flip, so the DroPE run need not train that prefix again: it takes the RoPE run's weights, step
and data position at the flip, with fresh optimizer moments (``config.branch_from``). With
``config.drope.rope_control`` a run trains its RoPE control first, in ``WORKDIR/rope_control``, and
branches from it, so the final table compares DroPE with RoPE at the same budget, both annealed.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from drope_jax import paths
from drope_jax.errors import ConfigError
from drope_jax.run_config import Plan, default_config
from drope_jax.train import checkpoint

CONTROL_DIR = "rope_control"
# What must equal between the two runs for the data position to mean the same batches.
SAME_DATA = (("data", ("source", "path", "seq_len", "shuffle_seed", "val_fraction", "document_masking",
                       "retrieval_share", "retrieval_template")),
             ("train", ("global_batch_size",)))


def source_dir(config, workdir):
    """The RoPE run this one branches from, if any."""
    if config.drope.rope_control:
        return workdir / CONTROL_DIR
    return paths.path(config.branch_from) if config.branch_from else None


def finished(source, plan: Plan) -> bool:
    """Whether the RoPE run ``source`` has its final checkpoint at this run's budget."""
    return (source / "checkpoints").is_dir() and \
        plan.total_steps in checkpoint.Checkpointer(source / "checkpoints", async_save=False).all_steps()


def params_at(source, step: int, spec, mesh) -> dict:
    """Parameters of checkpoint ``step`` of the run in ``source``, shaped for ``spec``; those it lacks (a RoPE
    control's QK-norm gains, unused in the RoPE phase) are 1."""
    ones = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), spec.abstract_params)
    return checkpoint.load_params_from(source, jax.device_put(ones, spec.shardings(mesh)), step=step,
                                       log=lambda _: None)


def control_config(config, plan: Plan):
    """``config`` without the flip: RoPE to the end, keeping its checkpoint at the flip for the branch."""
    c = config.copy_and_resolve_references()
    c.drope.update(flip_step=None, flip_tokens=None, rope_control=False, qk_norm_at_flip=False)
    if config.drope.qk_norm_at_flip:  # QK-norm gains that would only start at the flip: the control has none
        c.model.qk_norm = "none"
    c.checkpoint.keep_steps = tuple(sorted({*config.checkpoint.keep_steps, plan.flip_step}))
    return c


def start_state(config, plan: Plan, source, fresh_state, init_params, data_iter, log):
    """The train state at the flip from ``source``'s checkpoint there (weights, step), and the data iterator
    moved to its position. Optimizer moments are fresh; parameters the source lacks (QK-norm gains) too."""
    step = plan.flip_step
    _check_same_data(config, source)
    ckpt = checkpoint.Checkpointer(source / "checkpoints", async_save=False)
    try:
        if step not in ckpt.all_steps():
            raise ConfigError(f"config.branch_from={str(source)!r} has no checkpoint at step {step}, this run's flip "
                              f"(it has {ckpt.all_steps()}); train it with --config.checkpoint.keep_steps='({step},)'")
        meta = ckpt.meta(step)
        if meta["phase"] != "rope" or meta["tokens"] != step * plan.tokens_per_step:
            raise ConfigError(f"config.branch_from={str(source)!r}: its step {step} is in phase {meta['phase']!r} "
                              f"after {meta['tokens']:,} tokens; a branch needs a RoPE-phase checkpoint after "
                              f"{step * plan.tokens_per_step:,} tokens (the same batch and context)")
        params = checkpoint.load_params_from(source, init_params(), step=step, log=log)
        ckpt.restore_data(step, data_iter)
    finally:
        ckpt.close()
    state = fresh_state(params)
    log(f"branched from {source} at step {step}: its weights and data position, fresh optimizer moments")
    return dict(state, step=jax.device_put(jnp.int32(step), state["step"].sharding))


def _check_same_data(config, source) -> None:
    path = source / "config.json"
    if not path.is_file():
        raise ConfigError(f"config.branch_from={str(source)!r} has no config.json; is it a drope-jax workdir?")
    saved, defaults = json.loads(path.read_text()), default_config()

    def theirs(section, key):  # a key newer than their config.json has its default there
        return saved[section].get(key, defaults[section][key])

    diffs = [f"config.{section}.{key}: {theirs(section, key)!r} there, {config[section][key]!r} here"
             for section, keys in SAME_DATA for key in keys if theirs(section, key) != config[section][key]]
    if diffs:
        raise ConfigError(f"config.branch_from={str(source)!r} read other data: {'; '.join(diffs)}")
