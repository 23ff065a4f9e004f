"""Shared by the reliability tests: one uninterrupted reference run, and cleanup."""

import jax
import pytest

from drope_jax.train import loop, setup

import harness


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The tiny run, uninterrupted, in this process on 8 devices (fsdp=8); it keeps all its checkpoints."""
    workdir = tmp_path_factory.mktemp("reference")
    loop.run(harness.config(checkpoint=dict(keep=6)), workdir)
    return harness.Reference(workdir, harness.losses(workdir))


@pytest.fixture
def launch():
    """``launch(workdir, *flags, devices=8, env=None) -> harness.Run``; whatever is still running is killed."""
    started = []

    def start(workdir, *overrides, **kwargs):
        started.append(harness.Run(workdir, *overrides, **kwargs))
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
