"""A checkpoint written on 8 devices (fsdp=8) resumes on another device count and mesh shape."""

import numpy as np
import pytest

from drope_jax.train import loop

import harness


@pytest.mark.parametrize("mesh", [dict(num_devices=4, data=1, fsdp=4), dict(data=2, fsdp=4)],
                         ids=["4-devices-fsdp4", "8-devices-data2xfsdp4"])
def test_a_checkpoint_from_fsdp8_continues_on_another_mesh(tmp_path, reference, capsys, mesh):
    workdir = reference.checkpoint_copy(tmp_path, 8)  # written by the reference run: 8 devices, fsdp=8
    loop.run(harness.config(mesh=mesh, train=dict(stop_at_step=10)), workdir)
    out = capsys.readouterr().out
    assert "at step 8 " in out and f"'data': {mesh['data']}, 'fsdp': {mesh['fsdp']}" in out
    resumed = harness.losses(workdir)
    assert sorted(resumed) == [9, 10]
    # Only the reduction order differs (another split of the batch and the parameters).
    np.testing.assert_allclose([resumed[s] for s in resumed], [reference.losses[s] for s in resumed], rtol=1e-5)
