"""The run's configuration: every key with its default, and the plan derived from it.

Configs in ``configs/`` start from ``default_config()`` and change values, so the set of keys is
the same everywhere and a misspelt key is refused by ml_collections with a suggestion.
Budgets may be given in tokens or in steps; ``make_plan`` turns them into steps and checks them
before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib

import ml_collections
from ml_collections import config_dict

from drope_jax import paths
from drope_jax.data import niah, retrieval
from drope_jax.errors import ConfigError
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import NOPE, ROPE, PosEncoding
from drope_jax.train.optim import RECAL_SCHEDULES, SCHEDULES, Recal, decay_start, recal_schedule


def load_module(path):
    """The Python file ``path`` (a config, say) as a module, without putting its folder on sys.path."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(config_file: str, name: str):
    """The config module ``name`` in the same folder as ``config_file``: variants build on a base config."""
    return load_module(pathlib.Path(config_file).with_name(name))


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(  # every ModelConfig field: the schema is written once, there
        ModelConfig.defaults(), vocab_size=257, d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, mlp_dim=512))
    c.data = ml_collections.ConfigDict(dict(
        source="python_stdlib",  # or "arrayrecord": a directory written by launch/prepare_data.py
        path="",
        seq_len=128,
        document_masking=False,  # True: tokens attend only within their own packed document
        shuffle_seed=0,
        val_fraction=0.05,
        retrieval_share=0.0,  # >0: this share of every batch's rows is generated retrieval documents (retrieval.py)
        retrieval_template="auto",  # their NIAH wording: "ruler", "short", "code", or auto (as evaluation picks)
    ))
    c.train = ml_collections.ConfigDict(dict(
        global_batch_size=32,  # sequences per optimizer step, over all devices
        total_tokens=config_dict.placeholder(int),
        total_steps=config_dict.placeholder(int),
        grad_accum=1,
        stop_at_step=config_dict.placeholder(int),  # checkpoint and exit there; a relaunch continues
        seed=0,
        nonfinite="skip",  # "skip": skip the update and count it; "stop": stop at the first
        max_consecutive_nonfinite=5,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=3e-4, schedule="wsd", warmup_steps=100, min_lr_ratio=0.1, decay_fraction=0.2,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
    c.drope = ml_collections.ConfigDict(dict(
        flip_step=config_dict.placeholder(int),  # None: RoPE throughout; 0: NoPE from the first step
        flip_tokens=config_dict.placeholder(int),
        reset_opt_state=True,  # fresh AdamW moments at the flip, as the official recalibration; False carries them
        qk_norm_at_flip=False,  # QK-norm weights exist from the start but apply only after the flip
        flip_in_decay=False,  # True: accept a flip after the pretraining LR has begun to decay
        # The recalibration's own LR schedule, from the flip to the end: warm-up, then constant and a linear
        # decay ("wsd"), or a cosine decay from recal_lr to the floor at the end ("cosine").
        recal_schedule="wsd",
        recal_lr=config_dict.placeholder(float),  # None: config.optim.lr
        recal_warmup_steps=100,
        recal_decay_fraction=0.2,  # "wsd": the share of the recalibration's steps spent decaying
        recal_min_lr_ratio=config_dict.placeholder(float),  # the decay's end over recal_lr; None: config.optim's
        rope_control=False,  # also train the RoPE control (this config without the flip) in WORKDIR/rope_control
        # and branch this run from its checkpoint at the flip: the final table compares them at equal budget
    ))
    c.branch_from = ""  # a RoPE run's workdir: start at its checkpoint at the flip (weights, step, data position)
    c.positions = ml_collections.ConfigDict(dict(
        kind="rope",  # the encoding before the flip (or throughout, without one): "rope", "alibi" or "nope"
        nope_every=0,  # >0: every nope_every-th layer has no position encoding and full attention
        window=0,  # >0: the other layers attend to the last `window` tokens; RNoPE-SWA: kind="rope", nope_every=4
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1,
                                            num_devices=-1))  # >0: only the first N devices (one process)
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=100, keep=3, async_save=True,
        every_minutes=0.0,  # >0: also save when this long has passed since the last save (checked every log step)
        keep_steps=(),  # steps always saved and never deleted, e.g. where DroPE runs will branch (config.branch_from)
        fallback_on_corrupt=False,  # True: set an unreadable newest checkpoint aside and resume from an older one
    ))
    c.faults = ml_collections.ConfigDict(dict(  # injected faults, for reliability tests and drills only
        nonfinite_loss_at=(),  # steps (as logged, from 1) whose loss is made NaN
        nonfinite_grads_at=(),  # steps whose gradients are made NaN, the loss staying finite
        nonfinite_params_at=(),  # steps after whose update a parameter is NaN, unseen by that step's check
    ))
    c.log = ml_collections.ConfigDict(dict(
        every_steps=10,
        wandb_project="",  # non-empty: also log to this Weights & Biases project (pip install -e ".[wandb]")
        wandb_entity="",  # the W&B team or user (default: yours)
    ))
    c.eval = ml_collections.ConfigDict(dict(
        lengths=(1, 2, 4),  # multiples of data.seq_len, for the final and the in-training perplexity
        num_sequences=16,  # held-out rows at the longest length; shorter ones cover the same text in more rows
        batch_size=4,  # rows per forward at the longest length, as many tokens at shorter ones (evaluate's too)
        every_steps=0,  # >0: held-out perplexity at each length every this many steps, to metrics.jsonl
    ))
    c.init_from = ""  # a checkpoint directory, or "hf:DIR" (a Hugging Face one), whose parameters seed this run
    return c


def qk_norm_applies(phase: str, qk_norm_at_flip: bool) -> bool:
    """The one rule: QK-norm weights apply in every phase, except before the flip of a run that switches
    them on at the flip (``drope.qk_norm_at_flip``)."""
    return phase == "nope" or not qk_norm_at_flip


@dataclasses.dataclass(frozen=True)
class Plan:
    """Steps derived from the config, in the units the loop uses."""

    model: ModelConfig
    tokens_per_step: int
    total_steps: int
    flip_step: int | None
    pos: PosEncoding = ROPE  # config.positions: the encoding before the flip
    qk_norm_at_flip: bool = False
    recal: Recal | None = None  # the recalibration schedule of a flip after step 0

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step

    def phase(self, step: int) -> str:
        return "nope" if self.flip_step is not None and step >= self.flip_step else "rope"

    def phase_pos(self, phase: str) -> PosEncoding:
        """The encoding of a phase: config.positions before the flip ("rope" phase), NoPE in every layer after."""
        return NOPE if phase == "nope" else self.pos

    def uses_qk_norm(self, phase: str) -> bool:
        """Whether the QK-norm weights (if the model has them) apply in ``phase``."""
        return qk_norm_applies(phase, self.qk_norm_at_flip)

    def summary(self, config, branched_from=None) -> dict:
        """The steps and the flip's choices as the run applies them (config.json's "plan")."""
        flip = None if self.flip_step is None else {
            "step": self.flip_step, "tokens": self.flip_step * self.tokens_per_step,
            "adam_moments": "fresh" if config.drope.reset_opt_state else "carried",
            "qk_norm_switched_on": self.qk_norm_at_flip,
            "recalibration": self.recal._asdict() if self.recal else None,
            "branched_from": None if branched_from is None else str(branched_from)}
        return {"total_steps": self.total_steps, "tokens_per_step": self.tokens_per_step,
                "total_tokens": self.total_tokens, "flip": flip}

    def describe_recal(self) -> str:
        r, span = self.recal, self.total_steps - self.flip_step
        decay = (f"then a cosine decay over {span - r.warmup:,} steps" if r.schedule == "cosine" else
                 f"then constant, then {int(span * r.decay_fraction):,} steps of linear decay")
        return f"recalibration over {span:,} steps: LR {r.peak:.2e}, {r.warmup} warm-up steps, {decay} to {r.floor:.2e}"

    def describe(self) -> str:
        flip = "none" if self.flip_step is None else (
            f"step {self.flip_step:,} ({self.flip_step * self.tokens_per_step:,} tokens)")
        recal = f"; {self.describe_recal()}" if self.recal else ""
        return (f"{self.total_steps:,} steps x {self.tokens_per_step:,} tokens = {self.total_tokens:,} tokens; "
                f"positions: {self.pos.describe()}; flip to NoPE at {flip}{recal}")


def _steps(c, tokens_key: str, steps_key: str, tokens_per_step: int, what: str) -> int | None:
    section, tkey = tokens_key.split(".")
    tokens, steps = c[section][tkey], c[section][steps_key.split(".")[1]]
    if tokens is not None and steps is not None:
        raise ConfigError(f"set only one of config.{tokens_key} and config.{steps_key} for the {what}")
    if tokens is not None:
        return tokens // tokens_per_step
    return steps


def make_plan(c: ml_collections.ConfigDict, num_data_devices: int | None = None) -> Plan:
    """Validates the config and derives the step budget. Raises ConfigError naming the key to fix."""
    model = ModelConfig.from_dict(dict(c.model)).validate()
    if c.log.get("wandb_project") and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"config.log.wandb_project={c.log.wandb_project!r} needs wandb: pip install -e \".[wandb]\"")
    t = c.train
    if c.data.seq_len <= 0 or t.global_batch_size <= 0:
        raise ConfigError("config.data.seq_len and config.train.global_batch_size must be positive")
    if t.global_batch_size % t.grad_accum:
        raise ConfigError(f"config.train.global_batch_size ({t.global_batch_size}) must be divisible by "
                          f"config.train.grad_accum ({t.grad_accum})")
    if num_data_devices and (t.global_batch_size // t.grad_accum) % num_data_devices:
        raise ConfigError(
            f"config.train.global_batch_size/grad_accum ({t.global_batch_size // t.grad_accum}) does not divide "
            f"across the {num_data_devices} data-parallel devices (mesh data x fsdp); change the batch or config.mesh")
    retrieval.row_indices(t.global_batch_size, c.data.retrieval_share)
    if c.data.retrieval_template not in ("auto", *niah.TEMPLATES):
        raise ConfigError(f"config.data.retrieval_template={c.data.retrieval_template!r}; choose auto or one of "
                          f"{sorted(niah.TEMPLATES)}")
    if c.optim.schedule not in SCHEDULES:
        raise ConfigError(f"config.optim.schedule={c.optim.schedule!r}; choose one of {SCHEDULES}")
    if t.nonfinite not in ("skip", "stop"):
        raise ConfigError(f"config.train.nonfinite={t.nonfinite!r}; choose 'skip' or 'stop'")
    tokens_per_step = t.global_batch_size * c.data.seq_len
    total = _steps(c, "train.total_tokens", "train.total_steps", tokens_per_step, "budget")
    if not total or total <= 0:
        raise ConfigError("the budget is empty: set config.train.total_tokens or config.train.total_steps")
    flip = _steps(c, "drope.flip_tokens", "drope.flip_step", tokens_per_step, "flip")
    if flip is not None and not 0 <= flip <= total:
        raise ConfigError(f"the flip (config.drope.flip_step/flip_tokens -> step {flip}) is beyond the budget "
                          f"of {total} steps (config.train.total_tokens/total_steps)")
    if c.drope.qk_norm_at_flip and (model.qk_norm == "none" or flip is None):
        raise ConfigError("config.drope.qk_norm_at_flip needs config.model.qk_norm ('proj' or 'head') and a flip")
    recal = _check_recalibration(c, flip, total)
    if (c.branch_from or c.drope.rope_control) and not recal:
        raise ConfigError("config.branch_from and config.drope.rope_control need a flip after step 0 and before "
                          "the end (config.drope.flip_step)")
    if c.branch_from and c.drope.rope_control:
        raise ConfigError("set only one of config.branch_from and config.drope.rope_control (which sets the former)")
    if c.branch_from and not c.drope.reset_opt_state:
        raise ConfigError("config.branch_from starts from another run's weights with fresh optimizer moments; "
                          "set config.drope.reset_opt_state=True")
    return Plan(model=model, tokens_per_step=tokens_per_step, total_steps=total, flip_step=flip, pos=positions_of(c),
                qk_norm_at_flip=bool(c.drope.qk_norm_at_flip), recal=recal)


def _check_recalibration(c: ml_collections.ConfigDict, flip: int | None, total: int) -> dict | None:
    """The recalibration schedule of a flip after step 0 (None without one); refuses a flip inside the
    pretraining decay, unless config.drope.flip_in_decay says so, and a warm-up longer than the recalibration."""
    if not flip or flip >= total:
        return None
    d = c.drope
    decay_from = decay_start(c.optim, total)
    if decay_from is not None and flip > decay_from and not d.flip_in_decay:
        raise ConfigError(
            f"the flip at step {flip} comes after the pretraining LR (config.optim.schedule={c.optim.schedule!r}) "
            f"began to decay at step {decay_from}: the RoPE model at the flip is neither at its peak LR nor "
            f"annealed, and RoPE runs of the same budget decay over their last steps instead. Use "
            f"schedule='wsd' with decay_fraction <= {(total - flip) / total:.3f}, or recalibrate an annealed RoPE "
            "model in a run of its own (flip_step=0, config.init_from), or set config.drope.flip_in_decay=True")
    if d.recal_schedule not in RECAL_SCHEDULES:
        raise ConfigError(f"config.drope.recal_schedule={d.recal_schedule!r}; choose one of {RECAL_SCHEDULES}")
    if not 0 <= d.recal_decay_fraction <= 1:
        raise ConfigError(f"config.drope.recal_decay_fraction={d.recal_decay_fraction} must be in [0, 1]")
    if not 0 <= d.recal_warmup_steps < total - flip:
        raise ConfigError(f"config.drope.recal_warmup_steps={d.recal_warmup_steps} must be shorter than the "
                          f"recalibration ({total - flip} steps from the flip at {flip} to the end)")
    return recal_schedule(c.optim, d)


def positions_of(c: ml_collections.ConfigDict) -> PosEncoding:
    """config.positions as a PosEncoding; a bad value raises ConfigError naming the key."""
    p = c.positions
    try:
        return PosEncoding(p.kind, nope_every=p.nope_every, window=p.window)
    except ValueError as e:
        raise ConfigError(f"config.positions (kind={p.kind!r}, nope_every={p.nope_every}, window={p.window}): "
                          f"{str(e).removeprefix('PosEncoding: ')}") from None


def load_run_config(workdir) -> ml_collections.ConfigDict:
    """The config a run was launched with, from its ``config.json`` (written by launch/tpu_run.py)."""
    path = paths.path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist (launch/tpu_run.py writes it); pass the run's --config=FILE")
    c = default_config()
    _update(c, json.loads(path.read_text()))
    return c


def _update(c, values: dict) -> None:
    for key, value in values.items():
        if key not in c:
            continue  # a key this version no longer has
        if isinstance(value, dict) and isinstance(c[key], ml_collections.ConfigDict):
            _update(c[key], value)
        else:
            c[key] = tuple(value) if isinstance(value, list) else value
