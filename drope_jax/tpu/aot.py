"""Compile the real train step for a TPU slice on a CPU-only host, and say whether it fits.

The step is ``Setup.phase_step``, the one the run jits, lowered for abstract state and batch placed
with NamedShardings on the slice's compile-only devices (``drope_jax.tpu.topology``), with splash attention.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from drope_jax import sharding
from drope_jax.errors import ConfigError, first_line, out_of_device_memory
from drope_jax.tpu.topology import TpuSlice
from drope_jax.train import metrics
from drope_jax.train.setup import make_setup


@dataclasses.dataclass(frozen=True)
class AotReport:
    slice: TpuSlice
    mesh: dict
    phase: str
    seq_len: int
    global_batch: int
    grad_accum: int
    remat: str
    argument_bytes: int  # per chip, as XLA's memory analysis gives them
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs that reuse donated arguments' buffers
    code_bytes: int
    flops_per_chip: float  # XLA's cost analysis of the partitioned step (kernels such as splash count 0)
    layer_scan_iterations: int  # XLA's cost analysis counts a loop body once, whatever its trip count
    model_flops_per_chip: float  # PaLM formula: (6 N + 12 L d T) per token

    @property
    def bytes_per_chip(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    @property
    def fits(self) -> bool:
        return self.bytes_per_chip <= self.slice.hbm_bytes


class DoesNotFit(RuntimeError):
    """The step needs more HBM than the chip has: XLA refused to compile it, or its memory analysis says so."""

    def __init__(self, tpu_slice: TpuSlice, xla_message: str = "", need_gib: float | None = None):
        self.slice, self.xla_message, self.need_gib = tpu_slice, xla_message, need_gib
        m = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM", xla_message)
        if m:
            self.need_gib = float(m.group(1))
        self.need = "more than it has" if self.need_gib is None else f"{self.need_gib:.1f} GiB" + (
            " of temporaries alone, so XLA refused to compile it" if m else "")
        xla = f" (XLA: {first_line(xla_message, 300)})" if xla_message else ""
        super().__init__(f"DOES NOT FIT on {tpu_slice.name} ({tpu_slice.hbm_gib} GiB HBM per chip): the step needs "
                         f"{self.need}{xla}. Lower the per-chip batch with config.train.grad_accum (or "
                         "--search_grad_accum), use config.model.remat='full', or take a larger slice.")


def abstract_batch(config, mesh) -> dict:
    """The batch the data pipeline yields ([B, T+1] int32 per key), as sharded ShapeDtypeStructs."""
    keys = ("tokens", "segment_ids", "positions") if config.data.document_masking else ("tokens",)
    shape = (config.train.global_batch_size, config.data.seq_len + 1)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh)) for k in keys}


def compile_train_step(config, tpu_slice: TpuSlice, phase: str | None = None):
    """Lowers and compiles the sharded train step for ``tpu_slice``; returns (report, compiled).
    ``phase``: "rope" or "nope"; by default the phase the run starts in.

    Raises ConfigError (naming the key) when the batch or mesh does not divide the slice, DoesNotFit
    when XLA runs out of HBM while compiling."""
    config = config.copy_and_resolve_references()
    if config.model.attention_backend == "auto":
        config.model.attention_backend = "splash"  # jax.devices() here is the CPU, not the target
    devices = tpu_slice.devices()
    mesh_cfg = {k: v for k, v in config.mesh.items() if k != "num_devices"}
    mesh = sharding.make_mesh(**mesh_cfg, devices=devices)
    setup = make_setup(config, mesh=mesh)
    phase = phase or setup.plan.phase(0)
    with jax.set_mesh(mesh):
        lowered = setup.phase_step(phase).lower(setup.abstract_state(), abstract_batch(config, mesh))
        try:
            compiled = lowered.compile()
        except Exception as e:  # XLA:TPU refuses a program that cannot fit in HBM
            if out_of_device_memory(e):
                raise DoesNotFit(tpu_slice, str(e)) from e
            raise
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    tokens = config.train.global_batch_size * config.data.seq_len
    report = AotReport(
        slice=tpu_slice, mesh=dict(mesh.shape), phase=phase, seq_len=config.data.seq_len,
        global_batch=config.train.global_batch_size, grad_accum=config.train.grad_accum, remat=setup.plan.model.remat,
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes, flops_per_chip=float(cost.get("flops", 0.0)),
        layer_scan_iterations=-(-setup.plan.model.num_layers // setup.plan.model.scan_unroll),
        model_flops_per_chip=tokens * metrics.flops_per_token(setup.plan.model, config.data.seq_len) / mesh.size)
    return report, compiled


def describe(r: AotReport) -> str:
    gib = 2**30
    verdict = "FITS" if r.fits else "DOES NOT FIT"
    loops = [f"the layer scan's {r.layer_scan_iterations} iterations"] if r.layer_scan_iterations > 1 else []
    loops += [f"the {r.grad_accum} microbatches"] if r.grad_accum > 1 else []
    loops = f"; XLA counts each loop body once: {' and '.join(loops)} count as one" if loops else ""
    return "\n".join([
        f"{r.slice.name}: {r.slice.chips} chips ({r.slice.topology}), {r.slice.hbm_gib} GiB HBM each | mesh {r.mesh}",
        f"step: {r.phase} | seq {r.seq_len} x global batch {r.global_batch} (grad_accum {r.grad_accum}) | "
        f"remat {r.remat}",
        f"per-chip memory: {r.bytes_per_chip / gib:.2f} GiB of {r.slice.hbm_gib} GiB -> {verdict} "
        f"(arguments {r.argument_bytes / gib:.2f} + outputs {r.output_bytes / gib:.2f} + temp "
        f"{r.temp_bytes / gib:.2f} - aliased {r.alias_bytes / gib:.2f} GiB; code {r.code_bytes / 2**20:.1f} MiB)",
        f"compiled FLOPs per step: {r.flops_per_chip / 1e12:.2f} TFLOP per chip, "
        f"{r.flops_per_chip * r.slice.chips / 1e12:.1f} TFLOP in all (XLA cost analysis; the splash kernel is not "
        f"counted{loops}) | model FLOPs (PaLM) {r.model_flops_per_chip / 1e12:.2f} TFLOP per chip",
    ])


def search_grad_accum(config, tpu_slice: TpuSlice, phase: str | None = None, log=print):
    """Compiles with config.train.grad_accum doubled until the step fits; returns (report, compiled)
    of the first that does. Raises DoesNotFit when the microbatch can shrink no further."""
    config = config.copy_and_resolve_references()
    last = None
    while True:
        try:
            report, compiled = compile_train_step(config, tpu_slice, phase)
            if report.fits:
                return report, compiled
            last = DoesNotFit(tpu_slice, need_gib=report.bytes_per_chip / 2**30)
        except DoesNotFit as e:
            last = e
        except ConfigError:  # the batch no longer divides into smaller microbatches over the chips
            if last is None:
                raise
            raise last from None
        log(f"grad_accum {config.train.grad_accum}: does not fit on {tpu_slice.name} (needs {last.need}); trying "
            f"{config.train.grad_accum * 2}")
        config.train.grad_accum *= 2
