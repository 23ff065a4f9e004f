"""AdamW and the learning-rate schedule.

The schedule is a pure function of the global step, applied outside the optax chain, so that
resetting Adam's moments at the flip does not restart the schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "wsd", "constant")


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
    """Clip, Adam moments, decoupled weight decay (matrices only); the LR is applied by the step."""
    def decay_mask(params):  # weight decay on matrices, never on norm weights or biases
        return jax.tree_util.tree_map_with_path(
            lambda path, p: not any(s in jax.tree_util.keystr(path) for s in ("norm", "bias")), params)

    return optax.chain(
        optax.clip_by_global_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip > 0 else optax.identity(),
        optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
        optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask),
    )


def lr_at(step, *, optim_cfg, total_steps: int, flip_step: int | None, rewarm_steps: int):
    """Learning rate for a global step (int or traced scalar)."""
    step = jnp.asarray(step, jnp.float32)
    peak, warmup = optim_cfg.lr, max(optim_cfg.warmup_steps, 0)
    floor = peak * optim_cfg.min_lr_ratio
    warm = jnp.minimum(1.0, (step + 1) / max(warmup, 1))
    if optim_cfg.schedule == "constant":
        base = peak * warm
    elif optim_cfg.schedule == "cosine":
        frac = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        base = jnp.where(step < warmup, peak * warm, floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
    elif optim_cfg.schedule == "wsd":
        decay_steps = max(int(total_steps * optim_cfg.decay_fraction), 1)
        decay_start = total_steps - decay_steps
        frac = jnp.clip((step - decay_start) / decay_steps, 0.0, 1.0)
        base = jnp.where(step < warmup, peak * warm, peak - (peak - floor) * frac)
    else:
        raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}; choose one of {SCHEDULES}")
    if flip_step is not None and rewarm_steps > 0:
        rewarm = jnp.clip((step - flip_step + 1) / rewarm_steps, 0.0, 1.0)
        base = jnp.where(step >= flip_step, base * rewarm, base)
    return base
