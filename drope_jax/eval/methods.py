"""What each evaluation method runs: which weights of a run, under which position encoding, at a length.

- ``drope``: the final (or ``--step``) weights with NoPE in every layer and, past the training context, the
  paper's softmax temperature (``eval/temperature.py``); ``drope_raw``: the same without the temperature;
  ``drope_logn``: log-n query scaling past the context instead (an extension).
- ``rope``, ``pi``, ``ntk``, ``yarn``: the RoPE weights of a run, unscaled or scaled by the length
  multiple: for a DroPE run branched from a RoPE run (``config.drope.rope_control``, ``config.branch_from``),
  that run's final weights when it ran to the same budget (annealed like DroPE), else its checkpoint at the
  flip; for a DroPE run of its own, its flip-step checkpoint.
- ``nope``, ``alibi``, ``rnope_swa``: the final weights of a run trained from scratch with that
  encoding (config.positions), under it; ``nope`` with the temperature as ``drope``, ``nope_raw`` without.

``NAME@WORKDIR`` takes the weights from another run, so one report can compare runs.
"""

from __future__ import annotations

import dataclasses

import jax

from drope_jax import paths, sharding
from drope_jax.errors import ConfigError
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import NOPE, PosEncoding
from drope_jax.model.state import model_spec
from drope_jax.run_config import load_run_config, make_plan, qk_norm_applies
from drope_jax.train import branch, checkpoint

SCALINGS = {"rope": "none", "pi": "linear", "ntk": "ntk", "yarn": "yarn"}
TRAINED = {  # whether a run's (config.positions, flip step) was trained with the method from scratch
    "nope": lambda p, flip: flip == 0 or (p.kind == "nope" and flip is None),
    "alibi": lambda p, flip: p.kind == "alibi" and flip is None,
    "rnope_swa": lambda p, flip: p.kind == "rope" and p.nope_every > 0 and p.window > 0 and flip is None,
}
TEMPERED = ("drope", "nope")  # with the softmax temperature past the context; NAME_raw: without
METHODS = ("drope", "drope_raw", "drope_logn", *SCALINGS, *TRAINED, "nope_raw")


@dataclasses.dataclass(frozen=True)
class Weights:
    params: dict
    step: int | None
    phase: str  # "rope" or "nope": the phase these weights were trained in
    use_qk_norm: bool
    source: str


class Run:
    """A training workdir (its config.json and checkpoints), or a Hugging Face directory (``hf:DIR``)."""

    def __init__(self, workdir, *, config=None, step: int | None = None, init_from: str = "", log=print):
        self.workdir, self.step, self.log = paths.path(workdir), step, log
        self.config = config if config is not None else load_run_config(self.workdir)
        self.plan = make_plan(self.config)
        self.init_from = init_from
        # Every device, data parallel; a single CPU process uses one (its simulated devices share the same cores).
        one_cpu = jax.default_backend() == "cpu" and jax.process_count() == 1
        self.mesh = sharding.make_mesh(devices=jax.devices()[:1] if one_cpu else None)
        self._cache: dict = {}
        if init_from:
            if not init_from.startswith("hf:"):
                raise ConfigError(f"--init_from={init_from!r}: give hf:DIR (a Hugging Face checkpoint directory)")
            self.flip_step = None
            self.trained_pos = self._hf_positions(init_from[3:])
            self.model = self.plan.model
            self.final_step = None
        else:
            self.ckpt = checkpoint.Checkpointer(self.workdir / "checkpoints", async_save=False)
            latest = self.ckpt.latest_step()
            if latest is None:
                raise ConfigError(f"{self.workdir}/checkpoints holds no complete checkpoint; train first, or pass "
                                  "--init_from=hf:DIR")
            self.final_step = latest if step is None else step
            if self.final_step not in self.ckpt.all_steps():
                raise ConfigError(f"--step={step}: {self.workdir} has checkpoints {self.ckpt.all_steps()}")
            meta = self.ckpt.meta(self.final_step)
            self.model = ModelConfig.from_dict(meta["model"])
            self.flip_step = meta.get("flip_step")
            self.trained_pos = self.plan.pos
        # Forward passes only: a rolled layer scan without remat computes the same values as the unrolled,
        # rematerialized training step, and compiles one layer instead of all of them.
        self.model = dataclasses.replace(self.model, scan_unroll=1, remat="none")
        self.spec = model_spec(self.model)  # one object: jitted functions take it as a static argument

    @property
    def context(self) -> int:
        return self.config.data.seq_len

    def weights(self, which: str) -> Weights:
        """``final``: the step evaluated; ``rope_phase``: the last weights trained with config.positions."""
        key = "hf" if self.init_from else which  # a Hugging Face checkpoint has one set of weights
        if key not in self._cache:
            self._cache[key] = self._load(which)
        return self._cache[key]

    def _load(self, which: str) -> Weights:
        qk_at_flip = self.config.drope.qk_norm_at_flip
        if self.init_from:
            from drope_jax.hf.load import load_hf
            params, _ = load_hf(self.init_from[3:], self.model, mesh=self.mesh, log=self.log)
            return Weights(params, None, "nope" if self.trained_pos == NOPE else "rope", True, self.init_from)
        step = self.final_step
        if which == "rope_phase" and self.flip_step:
            source = branch.source_dir(self.config, self.workdir)
            if source is not None:
                return self._rope_source(source)
        if which == "rope_phase":
            if self.flip_step == 0:
                raise ConfigError(f"{self.workdir} trained without positions from step 0: it has no RoPE-phase "
                                  "weights; evaluate RoPE baselines from another run, e.g. --methods=rope@WORKDIR")
            if self.flip_step is not None and self.flip_step < self.final_step:
                step = self.flip_step
                if step not in self.ckpt.all_steps():
                    raise ConfigError(f"{self.workdir} lacks the flip-step checkpoint {step} that the RoPE baselines "
                                      "use (train.py preserves it; was it deleted?)")
        phase = self.ckpt.meta(step)["phase"]
        params = self.ckpt.restore_params(step, self.spec.placed_params(self.mesh))
        return Weights(params, step, phase, qk_norm_applies(phase, qk_at_flip), f"{self.workdir} step {step}")

    def _rope_source(self, source) -> Weights:
        """The RoPE run this one branched from: its final weights if it ran to the same budget (annealed like
        the DroPE run), else its checkpoint at the flip."""
        step = self.plan.total_steps if branch.finished(source, self.plan) else self.flip_step
        params = branch.params_at(source, step, self.spec, self.mesh)
        return Weights(params, step, "rope", self.plan.uses_qk_norm("rope"), f"{source} step {step}")

    def _hf_positions(self, hf_dir) -> PosEncoding:
        from drope_jax.hf.configs import read_source
        source = read_source(hf_dir)
        if source.position != "mixed":
            return NOPE if source.position == "nope" else PosEncoding("rope")
        flags = source.config.get("no_rope_layers") or []
        for every in range(2, len(flags) + 1):
            if list(PosEncoding("rope", nope_every=every).positional_layers(len(flags))) == [bool(f) for f in flags]:
                return PosEncoding("rope", nope_every=every)
        raise ConfigError(f"{hf_dir}: no_rope_layers={flags} is not a periodic pattern (PosEncoding.nope_every)")


def method_weights(name: str) -> str:
    return "rope_phase" if name in SCALINGS else "final"


def method_pos(name: str, run: Run, factor: float) -> PosEncoding:
    """The encoding ``name`` evaluates with at ``factor`` x the training context, before any temperature."""
    name = name.removesuffix("_raw")
    if name == "drope":
        return NOPE
    if name == "drope_logn":
        return PosEncoding("nope", log_n=True, original_length=run.context)
    if name in SCALINGS:
        if run.trained_pos.kind != "rope":
            raise ConfigError(f"method {name} scales RoPE; {run.workdir} was trained with "
                              f"config.positions.kind={run.trained_pos.kind!r}")
        scaling = SCALINGS[name] if factor > 1 else "none"
        return dataclasses.replace(run.trained_pos, scaling=scaling, factor=max(factor, 1.0),
                                   original_length=run.context)
    if name in TRAINED:
        if not TRAINED[name](run.trained_pos, run.flip_step):
            raise ConfigError(f"method {name} evaluates a run trained with it from scratch; {run.workdir} was trained "
                              f"with {run.trained_pos.describe()} (flip step {run.flip_step}); point it at such a "
                              f"run with --methods={name}@WORKDIR")
        return NOPE if name == "nope" else run.trained_pos
    raise ConfigError(f"unknown method {name!r}; choose from {METHODS} (optionally NAME@WORKDIR)")


def parse_methods(spec: str) -> list[tuple[str, str | None]]:
    """"drope,rope,alibi@/runs/alibi" -> [("drope", None), ("rope", None), ("alibi", "/runs/alibi")]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, where = item.partition("@")
        if name not in METHODS:
            raise ConfigError(f"--methods: unknown method {name!r}; choose from {METHODS} (optionally NAME@WORKDIR)")
        out.append((name, where or None))
    if not out:
        raise ConfigError("--methods is empty")
    return out
