"""Fingerprints of arrays: the same on every mesh, changed by any flipped bit, for every dtype; and the
Checkpointer verifies them on every read, whatever mesh or dtype it restores onto."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from drope_jax.train import checkpoint, fingerprint

DTYPES = [jnp.float32, jnp.bfloat16, jnp.int32, jnp.int8, jnp.bool_]
SHAPE = (16, 24)


def sample(dtype, shape=SHAPE):
    x = jax.random.normal(jax.random.key(0), shape) * 100
    return x > 0 if dtype == jnp.bool_ else x.astype(dtype)


def lanes(x) -> str:
    return fingerprint.of_arrays({"x": x})["x"]["fingerprint"]


def mesh(*shape):
    names = ("a", "b")[:len(shape)]
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))  # as the project's


def placements():
    """One device, and the 8 devices as rows of shards and as a 2x4 grid of them, both ways round."""
    line, grid = mesh(8), mesh(2, 4)
    return [jax.devices()[5], NamedSharding(line, P("a")), NamedSharding(grid, P("a", "b")),
            NamedSharding(grid, P("b", "a"))]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_the_fingerprint_does_not_depend_on_the_sharding(dtype):
    x = sample(dtype)
    assert len({lanes(jax.device_put(x, where)) for where in placements()}) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_every_flipped_bit_changes_the_fingerprint(dtype):
    x = np.asarray(sample(dtype))
    element_bytes = x.view(np.uint8).reshape(x.size, x.itemsize)
    variants = []
    for element in (0, 1, 200, x.size - 1):
        for bit in range(8 * x.itemsize) if dtype != jnp.bool_ else [0]:  # a bool's byte is 0 or 1
            flipped = element_bytes.copy()
            flipped[element, bit // 8] ^= 1 << (bit % 8)
            variants.append(lanes(jnp.asarray(flipped.view(x.dtype).reshape(x.shape))))
    assert lanes(jnp.asarray(x)) not in variants
    assert len(set(variants)) == len(variants), "two damaged arrays share a fingerprint"


def test_swapped_elements_and_bytes_moved_within_an_array_change_the_fingerprint():
    x = np.asarray(sample(jnp.float32))
    swapped = x.copy()
    swapped[[0, 3]] = swapped[[3, 0]]
    rolled = np.roll(x.view(np.uint8), 64).view(np.float32)  # the same bytes, shifted in the file
    assert len({lanes(jnp.asarray(a)) for a in (x, swapped, rolled)}) == 3


def test_the_fingerprint_is_of_the_bits_and_the_record_names_the_dtype():
    x = sample(jnp.float32)
    as_int = jax.lax.bitcast_convert_type(x, jnp.int32)
    f, i = fingerprint.of_arrays({"a": x})["a"], fingerprint.of_arrays({"a": as_int})["a"]
    assert f["fingerprint"] == i["fingerprint"] and (f["dtype"], i["dtype"]) == ("float32", "int32")
    assert fingerprint.differing({"a": f}, {"a": as_int}) == ["a"]
    assert lanes(jnp.float32(0.0)) != lanes(jnp.float32(-0.0))


def tree(scale=1.0):
    return {"params": {"w": sample(jnp.float32, (8, 16)) * scale, "e": sample(jnp.bfloat16, (32, 8))},
            "opt_state": {"mu": sample(jnp.float32, (8, 16)) * 0.5}, "step": jnp.int32(7)}


def abstract_on(on, spec, t, dtype=None):
    """``t``'s ShapeDtypeStructs placed on mesh ``on`` by ``spec`` (scalars replicated), in ``dtype`` if given."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype if dtype and x.ndim else x.dtype,
                                                       sharding=NamedSharding(on, spec if x.ndim else P())), t)


def test_a_checkpoint_restores_verified_onto_another_mesh_and_dtype(tmp_path):
    mesh8, grid = mesh(8), mesh(2, 4)
    saved = jax.device_put(tree(), jax.tree.map(lambda x: NamedSharding(mesh8, P("a") if x.ndim else P()), tree()))
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(3, saved, {"position": 1}, {"step": 3})
    restored = ckpt.restore(3, abstract_on(grid, P("b", "a"), saved))
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), restored, saved))
    wider = ckpt.restore_params(3, abstract_on(grid, P(None, "a"), saved["params"], jnp.float32))
    assert wider["e"].dtype == jnp.float32
    assert np.array_equal(np.asarray(wider["e"]), np.asarray(saved["params"]["e"]).astype(np.float32))
    assert ckpt.meta(3) == {"step": 3, checkpoint.FINGERPRINTS: fingerprint.FORMAT}


def test_restore_and_restore_params_refuse_arrays_that_differ_from_their_fingerprints(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, tree(), {}, {"step": 1})
    ckpt.save(2, tree(scale=2.0), {}, {"step": 2})
    record_file = tmp_path / "2" / checkpoint.FINGERPRINTS / "metadata"
    record = json.loads(record_file.read_text())
    record["arrays"]["params/w"] = fingerprint.of_arrays({"params": {"w": tree()["params"]["w"]}})["params/w"]
    record_file.write_text(json.dumps(record))  # as if checkpoint 2 held checkpoint 1's params/w
    line = mesh(8)
    with pytest.raises(fingerprint.Mismatch, match=rf"checkpoint {tmp_path}/2 does not match the fingerprints saved "
                                                   r"with it: params/w \(1 of 2 arrays read\) changed"):
        ckpt.restore_params(2, abstract_on(line, P(), tree()["params"]))
    with pytest.raises(fingerprint.Mismatch, match=r"params/w \(1 of 4 arrays read\)"):
        ckpt.restore(2, abstract_on(line, P(), tree()))
    ckpt.restore_params(1, abstract_on(line, P(), tree()["params"]))  # the other checkpoint is intact
