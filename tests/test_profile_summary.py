"""bench/profile_summary.py names the JAX operation behind each XLA fusion of a profile."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.model.positions import ROPE
from drope_jax.run_config import load_module
from drope_jax.train.setup import make_setup
from drope_jax.train.step import loss_fn

SUMMARY = load_module(pathlib.Path(__file__).parents[1] / "bench" / "profile_summary.py")


def test_fusion_origins_from_an_optimized_dump(tmp_path):
    def swiglu_loss(gate, up):
        return jnp.sum(jax.nn.silu(gate) * up)

    step = jax.jit(jax.grad(swiglu_loss, argnums=(0, 1))).lower(jnp.ones((64, 128)), jnp.ones((64, 128))).compile()
    (tmp_path / "module_0001.jit_init.cpu_after_optimizations.txt").write_text("a larger module " * 10**5)
    (tmp_path / "module_0002.jit_step.cpu_after_optimizations.txt").write_text(step.as_text())
    origins = SUMMARY.fusion_origins(str(tmp_path))
    assert origins, "no fusion found in the optimized HLO"
    assert all("." not in name and "-" not in name for name in origins)  # as a trace spells kernel names
    assert any(o.startswith("f32[64,128]") and "jit(swiglu_loss)" in o for o in origins.values()), origins


def test_a_library_calls_origin_comes_from_its_custom_call(tmp_path):
    """cuBLAS and cuDNN kernels are named for themselves; their trace events name the custom-call behind them."""
    (tmp_path / "module_0002.jit_step.sm_9.0a_gpu_after_optimizations.txt").write_text(
        '  %custom-call.12 = (bf16[32768,896]{1,0}, s8[33554432]{0}) custom-call(%bitcast.1, %bitcast.2), '
        'custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(step)/transpose(jvp())/attention/dot_general" '
        'scheduling_name="custom-call.12"}, backend_config={}\n')
    assert SUMMARY.fusion_origins(str(tmp_path)) == {
        "custom_call_12": "(bf16[32768,896]{1,0}, s8[33554432]{0}) jit(step)/transpose(jvp())/attention/dot_general"}


def test_fusion_origins_names_the_missing_dump(tmp_path):
    with pytest.raises(SystemExit, match="xla_dump_to"):
        SUMMARY.fusion_origins(str(tmp_path))


def test_the_train_steps_fusions_name_the_part_of_the_model_they_belong_to(tmp_path):
    """The model's named scopes reach the optimized HLO, so a profile's kernels say attention, mlp, lm_head or
    loss, in the forward and in the backward (transpose)."""
    config = load_module(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py").get_config()
    config.train.global_batch_size, config.data.seq_len = 8, 32
    setup = make_setup(config)
    with jax.set_mesh(setup.mesh):
        params = setup.fresh_state()["params"]
        tokens = sharding.host_batch_to_global(np.zeros((8, 33), np.int32), setup.mesh)
        grad = jax.jit(jax.grad(functools.partial(loss_fn, spec=setup.spec, pos=ROPE, use_qk_norm=False)))
        text = grad.lower(params, {"tokens": tokens}).compile().as_text()
    (tmp_path / "module_0004.jit_step.cpu_after_optimizations.txt").write_text(text)
    op_names = [origin.split(" ", 1)[1] for origin in SUMMARY.fusion_origins(str(tmp_path)).values()]
    for scope in ("attention", "mlp", "lm_head", "loss"):  # in the layer scan: .../attention/...; else jvp(loss)
        named = [n for n in op_names if f"/{scope}/" in n or f"({scope})" in n]
        assert any("transpose" in n for n in named) and any("transpose" not in n for n in named), scope


def test_idle_time_counts_only_when_no_stream_runs_a_kernel(capsys):
    ms = 10**6  # the trace's times are in ns
    # two streams: b overlaps a (no idle), then 2 ms idle before c, 1 ms before d; two steps traced
    SUMMARY.print_idle([(0, 10 * ms, "a"), (5 * ms, 20 * ms, "b"), (22 * ms, 30 * ms, "c"), (31 * ms, 40 * ms, "d")],
                       steps=2)
    out = capsys.readouterr().out
    assert "GPU idle: 1.50 ms per step of a 20.0 ms span (1 idle stretches a step)" in out
    assert out.index("2.000  b -> c") < out.index("1.000  c -> d")


def test_host_time_sums_xla_events_per_step_and_leaves_python_out(capsys):
    from types import SimpleNamespace as NS

    def event(name, ms):
        return NS(name=name, duration_ns=ms * 10**6)

    planes = [NS(name="/host:CPU", lines=[NS(name="python", events=[event("$profiler.py:307 trace", 50),
                                                                        event("PjitFunction(step)", 5),
                                                                        event("PjitFunction(step)", 3)]),
                                          NS(name="tf_pjrt", events=[event("ConditionalThunk", 3),
                                                                     event("ConditionalThunk", 1)])]),
              NS(name="/device:GPU:0", lines=[NS(name="Stream #1", events=[event("gemm", 100)])])]
    SUMMARY.print_host(planes, steps=2)
    out = capsys.readouterr().out
    assert "4.00 ms  x1     PjitFunction(step)" in out and "2.00 ms  x1     ConditionalThunk" in out
    assert "profiler.py" not in out and "gemm" not in out
    assert out.index("PjitFunction") < out.index("ConditionalThunk")
