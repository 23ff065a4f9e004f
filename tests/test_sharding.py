"""The mesh, the logical-axis table, and the train step on 8 simulated devices: sharded training
equals single-device training, gradient accumulation equals one big batch, and a non-finite step is
skipped."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import ROPE
from drope_jax.run_config import default_config
from drope_jax.train import optim, step

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                  qk_norm="proj", compute_dtype="float32").validate()
BATCH, SEQ, STEPS, LR = 8, 16, 4, 3e-3
MESHES = {  # name -> make_mesh arguments
    "one_device": dict(devices=jax.devices()[:1]),
    "fsdp8": dict(fsdp=8),
    "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
}


def mesh_named(name):
    return sharding.make_mesh(**MESHES[name])


# ---------------------------------------------------------------------------------------------
# make_mesh


def test_make_mesh_fills_the_free_axis():
    assert dict(sharding.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(sharding.make_mesh(data=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh(data=-1, fsdp=2, tensor=1).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert dict(sharding.make_mesh(data=2, fsdp=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh(data=2, devices=jax.devices()[:4]).shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    one = sharding.make_mesh(devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1} and one.devices.size == 1
    assert sharding.make_mesh().axis_names == ("data", "fsdp", "tensor")


@pytest.mark.parametrize("kw, message", [
    (dict(data=3), "do not divide"),
    (dict(data=2, fsdp=2, tensor=1), "needs 4 devices"),
    (dict(data=4, fsdp=4), "needs 16 devices"),
    (dict(data=-1, fsdp=-1), "only one axis"),
])
def test_make_mesh_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(**kw)


# ---------------------------------------------------------------------------------------------
# logical_to_spec


def test_logical_to_spec_fsdp_default():
    mesh = sharding.make_mesh()  # fsdp=8
    spec = functools.partial(sharding.logical_to_spec, mesh=mesh)
    assert spec(("vocab", "embed"), (64, 32)) == P(None, "fsdp")
    assert spec(("embed", "mlp"), (32, 64)) == P("fsdp", None)
    assert spec(("layers", "embed", "heads", "head_dim"), (2, 32, 4, 8)) == P(None, "fsdp", None, None)
    assert spec(("layers", "norm"), (2, 32)) == P(None, None)
    assert spec(("embed", "mlp"), (12, 64)) == P(None, None)  # 12 rows do not split 8 ways
    assert spec(("batch", None), (16, 17)) == P("fsdp", None)


def test_logical_to_spec_three_axes():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    spec = functools.partial(sharding.logical_to_spec, mesh=mesh)
    assert spec(("vocab", "embed"), (256, 32)) == P("tensor", "fsdp")
    assert spec(("vocab", "embed"), (257, 32)) == P(None, "fsdp")  # the byte vocab does not split
    assert spec(("embed", "vocab"), (32, 257)) == P("fsdp", None)
    assert spec(("heads", "mlp"), (4, 8)) == P("tensor", None)  # a mesh axis is used once per array
    assert spec(("batch", None), (8, 17)) == P(("data", "fsdp"), None)
    assert spec(("batch", None), (2, 17)) == P("data", None)  # fsdp dropped: 2 rows over 4 devices
    assert spec(("batch", None), (3, 17)) == P(None, None)
    assert spec(("batch", "seq", "act_heads", None), (8, 16, 4, 8)) == P(("data", "fsdp"), None, "tensor", None)


def test_every_parameter_sharding_divides_its_array():
    spec = state.model_spec(CFG)
    for name in ("fsdp8", "data2_fsdp2_tensor2"):
        mesh = mesh_named(name)
        split = 0
        for sh, x in zip(jax.tree.leaves(spec.shardings(mesh)), jax.tree.leaves(spec.abstract_params)):
            shard = sh.shard_shape(x.shape)
            assert all(d % s == 0 for d, s in zip(x.shape, shard)), (name, x.shape, sh.spec)
            split += shard != x.shape
        assert split >= 8  # the matrices are split; only norms stay whole


def test_host_batch_to_global():
    mesh = mesh_named("data2_fsdp2_tensor2")
    batch = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    tokens = sharding.host_batch_to_global(batch, mesh)
    assert tokens.shape == (8, 5)
    assert tokens.sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(tokens), batch)


# ---------------------------------------------------------------------------------------------
# Training


def optim_cfg(**kw):
    c = default_config().optim
    c.update({"warmup_steps": 0, "weight_decay": 0.1, **kw})
    return c


@functools.cache
def spec_and_tx():
    return state.model_spec(CFG), optim.make_optimizer(optim_cfg())


@functools.cache
def initial_params():
    """Random parameters in numpy, shaped like the model's (norm weights 1): every mesh starts from
    these values. (``state.init_params`` is exercised in test_model; its random initialiser takes
    seconds to compile on CPU.)"""
    spec, _ = spec_and_tx()
    rng = np.random.default_rng(0)

    def init(path, x):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(x.shape, x.dtype)
        return (CFG.init_std * rng.standard_normal(x.shape)).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(init, spec.abstract_params)


def batches(n=STEPS, seed=0):
    """Host batches as ``data.train_dataset(document_masking=True)`` yields them: two documents per
    row, ``segment_ids`` and positions restarting at each document. Each document counts upwards
    (mod vocab) from a random start with a stride of 1 or 3, so the model has something to learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(SEQ + 1)
    out = []
    for _ in range(n):
        start = rng.integers(0, CFG.vocab_size, (BATCH, 2))
        stride = rng.choice([1, 3], (BATCH, 1))
        second = t >= rng.integers(3, SEQ - 2, (BATCH, 1))
        positions = np.where(second, t - np.argmax(second, axis=1)[:, None], t)
        tokens = (np.where(second, start[:, 1:], start[:, :1]) + stride * positions) % CFG.vocab_size
        out.append({"tokens": tokens.astype(np.int32), "segment_ids": (1 + second).astype(np.int32),
                    "positions": positions.astype(np.int32)})
    return out


def to_global(batch, mesh):
    return jax.tree.map(lambda x: sharding.host_batch_to_global(x, mesh), batch)


@functools.cache
def compiled_step(mesh_name, grad_accum=1):
    spec, tx = spec_and_tx()
    mesh = mesh_named(mesh_name)
    state_sh = step.state_shardings(spec, tx, mesh)
    fn = step.make_train_step(spec, tx, lambda s: LR, pos=ROPE, use_qk_norm=True, grad_accum=grad_accum)
    with jax.set_mesh(mesh):
        init = jax.jit(functools.partial(step.init_state, tx=tx), out_shardings=state_sh)
    return mesh, init, step.jit_train_step(fn, state_sh, mesh)


def train(mesh_name, grad_accum=1, steps=STEPS):
    mesh, init, train_step = compiled_step(mesh_name, grad_accum=grad_accum)
    losses, norms = [], []
    with jax.set_mesh(mesh):
        st = init(initial_params())
        for batch in batches(steps):
            st, metrics = train_step(st, to_global(batch, mesh))
            assert not bool(metrics["nonfinite"])
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
    return np.array(losses), np.array(norms), st


@functools.cache
def single_device_run():
    losses, norms, st = train("one_device")
    return losses, norms, jax.tree.map(np.asarray, st["params"])


@pytest.mark.parametrize("mesh_name", ["fsdp8", "data2_fsdp2_tensor2"])
def test_sharded_training_matches_one_device(mesh_name):
    want_losses, want_norms, want_params = single_device_run()
    assert want_losses[-1] < want_losses[0] - 0.01  # it is learning, so the trajectory means something
    losses, norms, st = train(mesh_name)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    np.testing.assert_allclose(norms, want_norms, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(st["params"]["blocks"]["attn"]["q_DNH"]),
                               want_params["blocks"]["attn"]["q_DNH"], rtol=1e-3, atol=1e-5)
    # the state stays where the table puts it
    mesh = mesh_named(mesh_name)
    embed = st["params"]["embed_VD"]
    assert embed.sharding.spec == sharding.logical_to_spec(("vocab", "embed"), embed.shape, mesh)
    assert embed.sharding.spec[1] == "fsdp"
    assert len(embed.addressable_shards) == 8
    assert embed.addressable_shards[0].data.shape[1] == CFG.d_model // mesh.shape["fsdp"]
    mu = st["opt_state"][1].mu["embed_VD"]
    assert mu.sharding.spec == embed.sharding.spec


def test_grad_accumulation_matches_one_batch():
    want_losses, want_norms, want_params = single_device_run()
    # micro-batches of 4 rows over data x fsdp = 4 devices
    losses, norms, st = train("data2_fsdp2_tensor2", grad_accum=2)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    np.testing.assert_allclose(norms, want_norms, rtol=1e-4)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-5),
                 st["params"], want_params)


def test_nonfinite_step_is_skipped():
    mesh, init, train_step = compiled_step("fsdp8", grad_accum=1)
    good, bad = batches(2, seed=1)
    with jax.set_mesh(mesh):
        st, metrics = train_step(init(initial_params()), to_global(good, mesh))
        assert not bool(metrics["nonfinite"])
        # poison one weight: every logit, the loss and the gradient become NaN
        up = st["params"]["blocks"]["mlp"]["up_DF"]
        st["params"]["blocks"]["mlp"]["up_DF"] = jax.device_put(up.at[0, 0, 0].set(np.nan), up.sharding)
        before = jax.tree.map(np.asarray, st)
        after, metrics = train_step(st, to_global(bad, mesh))
    assert bool(metrics["nonfinite"])
    assert not np.isfinite(float(metrics["loss"]))
    after = jax.tree.map(np.asarray, after)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after["params"], before["params"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after["opt_state"], before["opt_state"])
    assert int(after["step"]) == int(before["step"]) + 1
    assert np.count_nonzero(np.isnan(after["params"]["blocks"]["mlp"]["up_DF"])) == 1
