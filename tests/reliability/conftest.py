"""Shared by the reliability tests: one uninterrupted reference run, a compile cache, and cleanup."""

import jax
import pytest

from drope_jax.train import loop, setup

import harness


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(autouse=True)
def _compile_once(xla_cache):
    """These tests and the programs they launch compile the same few programs many times: once is enough."""
    with harness.compile_cache(xla_cache):
        yield


@pytest.fixture(scope="session")
def reference(tmp_path_factory, xla_cache):
    """The tiny run, uninterrupted, in this process on 8 devices (fsdp=8)."""
    workdir = tmp_path_factory.mktemp("reference")
    with harness.compile_cache(xla_cache):
        loop.run(harness.config(), workdir)
    return harness.Reference(workdir, harness.losses(workdir))


@pytest.fixture
def launch(xla_cache):
    """``launch(workdir, *flags, devices=8, env=None) -> harness.Run``; whatever is still running is killed."""
    started = []

    def start(workdir, *overrides, **kwargs):
        started.append(harness.Run(workdir, *overrides, cache_dir=xla_cache, **kwargs))
        return started[-1]

    yield start
    for run in started:
        run.signal()
        run.proc.wait(30)


@pytest.fixture
def nothing_lowered():
    """Fails the test if JAX lowered (so would compile) any program meanwhile."""
    setup.make_setup(harness.config())  # primes the eager scalars (optax's step count) every setup makes
    lowered = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield
    jax.monitoring.unregister_event_duration_listener(listener)
    assert not lowered, f"{len(lowered)} program(s) were lowered before the error"
