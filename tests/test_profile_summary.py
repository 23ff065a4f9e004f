"""bench/profile_summary.py names the JAX operation behind each XLA fusion of a profile."""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from drope_jax.run_config import load_module

SUMMARY = load_module(pathlib.Path(__file__).parents[1] / "bench" / "profile_summary.py")


def test_fusion_origins_from_an_optimized_dump(tmp_path):
    def swiglu_loss(gate, up):
        return jnp.sum(jax.nn.silu(gate) * up)

    step = jax.jit(jax.grad(swiglu_loss, argnums=(0, 1))).lower(jnp.ones((64, 128)), jnp.ones((64, 128))).compile()
    (tmp_path / "module_0001.jit_small.cpu_after_optimizations.txt").write_text("tiny module")
    (tmp_path / "module_0002.jit_step.cpu_after_optimizations.txt").write_text(step.as_text())
    origins = SUMMARY.fusion_origins(str(tmp_path))
    assert origins, "no fusion found in the optimized HLO"
    assert all("." not in name and "-" not in name for name in origins)  # as a trace spells kernel names
    assert any(o.startswith("f32[64,128]") and "jit(swiglu_loss)" in o for o in origins.values()), origins


def test_fusion_origins_names_the_missing_dump(tmp_path):
    with pytest.raises(SystemExit, match="xla_dump_to"):
        SUMMARY.fusion_origins(str(tmp_path))
