"""AOT compilation of the real train step for TPU slices, on this CPU-only host (libtpu describes the
chips; nothing runs on them). Slice names, the compile and its memory report, and the errors."""

import pathlib

import pytest

from drope_jax.errors import ConfigError
from drope_jax.run_config import load_module
from drope_jax.tpu import topology

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config():
    return load_module(ROOT / "configs" / "tiny.py").get_config()


@pytest.mark.parametrize("name, chips, grid, hbm", [
    ("v4-8", 4, "2x2x1", 32), ("v5p-8", 4, "2x2x1", 95), ("v5p-64", 32, "2x4x4", 95),
    ("v5e-8", 8, "2x4", 16), ("v5litepod-16", 16, "4x4", 16), ("v6e-8", 8, "2x4", 32)])
def test_slice_names_count_cores_on_v4_v5p_and_chips_on_v5e_v6e(name, chips, grid, hbm):
    s = topology.parse_slice(name)
    assert (s.chips, s.topology, s.hbm_gib) == (chips, grid, hbm)


def test_unknown_slice_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown TPU topology 'v5p-6'; known: .*v5p-8.*v6e-8"):
        topology.parse_slice("v5p-6")


@pytest.fixture(scope="module")
def aot():
    pytest.importorskip("libtpu", reason='AOT compilation needs libtpu: pip install -e ".[tpu]"')
    from drope_jax.tpu import aot
    return aot


@pytest.mark.parametrize("name, kind", [("v4-8", "TPU v4"), ("v5p-64", "TPU v5"), ("v5e-8", "TPU v5 lite"),
                                        ("v6e-8", "TPU v6 lite")])
def test_libtpu_gives_one_device_per_chip(aot, name, kind):
    devices = topology.parse_slice(name).devices()
    assert len(devices) == topology.parse_slice(name).chips
    assert {d.device_kind for d in devices} == {kind} and {d.platform for d in devices} == {"tpu"}


def test_tiny_train_step_compiles_for_v5e_8_with_splash_and_fits(aot):
    report, compiled = aot.compile_train_step(tiny_config(), topology.parse_slice("v5e-8"))
    assert report.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
    assert report.phase == "rope" and report.grad_accum == 1
    assert 0 < report.bytes_per_chip < 2**30 and report.fits
    assert report.argument_bytes > 0 and report.flops_per_chip > 0
    # the splash kernel's forward and both backward kernels, as Mosaic custom calls
    assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == 3
    text = aot.describe(report)
    assert "FITS" in text and "of 16 GiB" in text and "'fsdp': 8" in text


def test_a_batch_that_does_not_divide_the_chips_names_the_key(aot):
    config = tiny_config()
    config.train.global_batch_size = 12
    with pytest.raises(ConfigError, match="config.train.global_batch_size"):
        aot.compile_train_step(config, topology.parse_slice("v5e-8"))


def test_too_big_a_step_does_not_fit_and_the_search_finds_the_grad_accum_that_does(aot):
    config = tiny_config()
    config.train.global_batch_size = 4096  # 4096 x 128 tokens on one 16 GiB chip: ~48 GiB of activations
    messages = []
    report, _ = aot.search_grad_accum(config, topology.parse_slice("v5e-1"), log=messages.append)
    assert report.fits and report.grad_accum == 4 and report.global_batch == 4096
    assert len(messages) == 2 and "grad_accum 1: does not fit on v5e-1 (needs" in messages[0]


def test_does_not_fit_reads_xla_s_figure_and_names_the_fix(aot):
    xla = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (86.47G) "
           "exceeds available HBM (30.75G).")
    e = aot.DoesNotFit(topology.parse_slice("v4-8"), xla)
    assert e.need_gib == 86.47
    assert "DOES NOT FIT on v4-8 (32 GiB HBM per chip): the step needs 86.5 GiB of temporaries alone" in str(e)
    assert "config.train.grad_accum" in str(e) and "config.model.remat" in str(e)
