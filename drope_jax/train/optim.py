"""AdamW and the learning-rate schedules.

The schedule is a pure function of the global step, applied outside the optax chain, so that
restarting Adam's moments at the flip does not restart it. A run with a flip has two schedules:
the pretraining one (``config.optim``) before the flip and the recalibration's own (``config.drope.recal_*``:
warm-up, then constant and a linear decay over its last part ("wsd"), or a cosine decay ("cosine")) from the
flip to the end.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "wsd", "constant")
RECAL_SCHEDULES = ("wsd", "cosine")  # config.drope.recal_schedule
STARTS_AT_FLIP = "starts_at_flip"  # the optimizer group of parameters that first train at the flip


def make_optimizer(optim_cfg, starts_at_flip=None) -> optax.GradientTransformation:
    """Clip, Adam moments, decoupled weight decay (matrices only); the LR is applied by the step.

    ``starts_at_flip``: a predicate on parameter paths (``['blocks']['attn']['q_norm']['weight']``) naming
    parameters that get no gradient before the flip. They get Adam moments of their own, with their own
    bias-correction count, which ``restart_moments`` restarts at the flip.
    """
    def decay_mask(params):  # weight decay on matrices, never on norm weights or biases
        return jax.tree_util.tree_map_with_path(
            lambda path, p: not any(s in jax.tree_util.keystr(path) for s in ("norm", "bias")), params)

    def adam():
        return [optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
                optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask)]

    clip = optax.clip_by_global_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip > 0 else optax.identity()
    if starts_at_flip is None:
        return optax.chain(clip, *adam())

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: STARTS_AT_FLIP if starts_at_flip(jax.tree_util.keystr(path)) else "trained", params)

    return optax.chain(clip, optax.multi_transform({"trained": optax.chain(*adam()),
                                                    STARTS_AT_FLIP: optax.chain(*adam())}, labels))


def restart_moments(tx, opt_state, params, *, everything: bool):
    """Fresh Adam moments (and bias-correction count) at the flip: for every parameter, or only for the
    group of ``make_optimizer(starts_at_flip=...)``, the others' moments carried over."""
    fresh = tx.init(params)
    if everything:
        return fresh
    clip_state, groups = opt_state
    inner = dict(groups.inner_states, **{STARTS_AT_FLIP: fresh[1].inner_states[STARTS_AT_FLIP]})
    return clip_state, groups._replace(inner_states=inner)


def _warmup_stable_decay(step, *, peak, warmup: int, total: int, decay_steps: int, floor):
    """Linear warm-up over ``warmup`` steps, ``peak`` until the last ``decay_steps`` of ``total``, then linear
    to ``floor``."""
    warm = jnp.minimum(1.0, (step + 1) / max(warmup, 1))
    frac = jnp.clip((step - (total - decay_steps)) / max(decay_steps, 1), 0.0, 1.0)
    return jnp.where(step < warmup, peak * warm, peak - (peak - floor) * frac)


def _warmup_cosine(step, *, peak, warmup: int, total: int, floor):
    """Linear warm-up over ``warmup`` steps, then a cosine from ``peak`` to ``floor`` at step ``total``."""
    warm = jnp.minimum(1.0, (step + 1) / max(warmup, 1))
    frac = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    return jnp.where(step < warmup, peak * warm, floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))


def decay_start(optim_cfg, total_steps: int) -> int | None:
    """The first step at which the pretraining schedule falls below its peak; None: never."""
    if optim_cfg.schedule == "constant":
        return None
    if optim_cfg.schedule == "cosine":
        return max(optim_cfg.warmup_steps, 0)
    return total_steps - max(int(total_steps * optim_cfg.decay_fraction), 1)


class Recal(NamedTuple):
    peak: float
    floor: float
    warmup: int
    decay_fraction: float  # "wsd" only: the share of the recalibration's steps that decays
    schedule: str = "wsd"  # one of RECAL_SCHEDULES


def recal_schedule(optim_cfg, drope_cfg) -> Recal:
    """The recalibration's peak LR, floor, warm-up, decay share and shape, unset values taken from ``config.optim``."""
    peak = optim_cfg.lr if drope_cfg.recal_lr is None else drope_cfg.recal_lr
    ratio = optim_cfg.min_lr_ratio if drope_cfg.recal_min_lr_ratio is None else drope_cfg.recal_min_lr_ratio
    return Recal(peak, peak * ratio, drope_cfg.recal_warmup_steps, drope_cfg.recal_decay_fraction,
                 drope_cfg.recal_schedule)


def lr_at(step, *, optim_cfg, total_steps: int, flip_step: int | None = None, drope_cfg=None):
    """Learning rate for a global step (int or traced scalar). With a flip after step 0 and ``drope_cfg``,
    steps from the flip on follow the recalibration schedule over the remaining steps."""
    step = jnp.asarray(step, jnp.float32)
    peak, warmup = optim_cfg.lr, max(optim_cfg.warmup_steps, 0)
    floor = peak * optim_cfg.min_lr_ratio
    warm = jnp.minimum(1.0, (step + 1) / max(warmup, 1))
    if optim_cfg.schedule == "constant":
        base = peak * warm
    elif optim_cfg.schedule == "cosine":
        base = _warmup_cosine(step, peak=peak, warmup=warmup, total=total_steps, floor=floor)
    elif optim_cfg.schedule == "wsd":
        base = _warmup_stable_decay(step, peak=peak, warmup=warmup, total=total_steps, floor=floor,
                                    decay_steps=max(int(total_steps * optim_cfg.decay_fraction), 1))
    else:
        raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}; choose one of {SCHEDULES}")
    if not flip_step or drope_cfg is None:
        return base
    r = recal_schedule(optim_cfg, drope_cfg)
    span = total_steps - flip_step
    if r.schedule == "cosine":
        recal = _warmup_cosine(step - flip_step, peak=r.peak, warmup=r.warmup, total=span, floor=r.floor)
    elif r.schedule == "wsd":
        recal = _warmup_stable_decay(step - flip_step, peak=r.peak, warmup=r.warmup, total=span,
                                     decay_steps=int(span * r.decay_fraction), floor=r.floor)
    else:
        raise ValueError(f"config.drope.recal_schedule={r.schedule!r}; choose one of {RECAL_SCHEDULES}")
    return jnp.where(step >= flip_step, recal, base)
