"""The device mesh and the one table that places every parameter and activation on it.

Parameters carry logical axis names (``nnx.Param(..., sharding=("embed", "mlp"))``); activations
get them through ``constrain``. ``LOGICAL_RULES`` maps each logical name to mesh axes. FSDP is the
default: parameters are split over ``fsdp`` along their embed dimension, the batch over
``data`` x ``fsdp``, and ``tensor`` splits heads, MLP and vocab.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from drope_jax.errors import ConfigError
from drope_jax.model.config import KERNEL_BACKENDS

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "layers": (),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "norm": (),
    # activations
    "batch": ("data", "fsdp"),
    "seq": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None,
              num_devices: int = -1) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1, meaning all remaining devices.

    ``num_devices`` > 0 uses only the first that many devices (one process only), e.g. to resume a
    checkpoint on fewer devices than wrote it.
    """
    if devices is None:
        devices = jax.devices()
        if num_devices != -1:
            if not 0 < num_devices <= len(devices) or jax.process_count() > 1:
                several = "; a run of several processes uses all devices" if jax.process_count() > 1 else ""
                raise ConfigError(f"config.mesh.num_devices={num_devices}: use -1 (all devices) or "
                                  f"1..{len(devices)}{several}")
            devices = devices[:num_devices]
    devices = list(devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"config.mesh: only one axis may be -1, got {free}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % fixed:
            raise ConfigError(f"config.mesh: {len(devices)} devices do not divide by the fixed axes {sizes}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ConfigError(f"config.mesh {sizes} needs {math.prod(sizes.values())} devices, have {len(devices)}")
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(names, shape, mesh) -> P:
    """Mesh PartitionSpec for one array. A mesh axis that does not divide the dimension is dropped."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in LOGICAL_RULES[name] if mesh.shape[a] > 1 and a not in used) if name else ()
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*spec)


def named_sharding(names, shape, mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def tree_shardings(logical_tree, abstract_tree, mesh):
    """NamedShardings for a pytree, from a matching tree of logical PartitionSpecs."""
    return jax.tree.map(lambda names, x: named_sharding(tuple(names), x.shape, mesh),
                        logical_tree, abstract_tree, is_leaf=lambda x: isinstance(x, P))


def target_platform() -> str:
    """Where the computation being traced will run: the mesh's devices (TPU in an AOT compile on a CPU
    host), else the default device. Picks attention's backend and whether the Pallas kernels run."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.devices()[0].platform if mesh.empty else mesh.abstract_device.platform


def kernel_implementation(backend: str, setting: str) -> str:
    """"xla" or "pallas" for a kernel setting (``setting`` names it in errors): "auto" takes Pallas on a single
    GPU only, where it was measured faster and needs no shard_map."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"{setting}={backend!r}: choose one of {KERNEL_BACKENDS}")
    if backend != "auto":
        return backend
    mesh = jax.sharding.get_abstract_mesh()
    one_device = mesh.size == 1 if not mesh.empty else jax.device_count() == 1
    return "pallas" if target_platform() == "gpu" and one_device else "xla"


def on_each_device(kernel, args, arg_names, out_names):
    """``kernel(*args)`` for a kernel that does not partition by itself: called as is without a mesh or on a
    one-device mesh, else under ``jax.shard_map``, each array laid out by its logical names as everywhere else.
    ``out_names``: one output's names, or a tuple of them for a kernel that returns a tuple."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(*args)
    in_specs = tuple(logical_to_spec(names, a.shape, mesh) for names, a in zip(arg_names, args, strict=True))
    out_shapes = jax.eval_shape(kernel, *args)
    if isinstance(out_shapes, tuple):
        out_spec = tuple(logical_to_spec(n, o.shape, mesh) for n, o in zip(out_names, out_shapes, strict=True))
    else:
        out_spec = logical_to_spec(out_names, out_shapes.shape, mesh)
    return jax.shard_map(kernel, mesh=mesh, in_specs=in_specs, out_specs=out_spec, check_vma=False)(*args)


def constrain(x, names):
    """Pins an activation's layout by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    return named_sharding(("batch",) + (None,) * (ndim - 1), (0,) * ndim, mesh)


def host_batch_to_global(batch_np: np.ndarray, mesh) -> jax.Array:
    """Builds a global array from this process's rows of the batch."""
    sharding = batch_sharding(mesh, batch_np.ndim)
    global_shape = (batch_np.shape[0] * jax.process_count(),) + batch_np.shape[1:]
    return jax.make_array_from_process_local_data(sharding, batch_np, global_shape)


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs of ``abstract`` placed with ``shardings`` (what Orbax restores into, or AOT compiles for)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
