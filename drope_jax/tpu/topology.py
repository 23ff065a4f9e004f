"""TPU slices by their Cloud names (v5p-8, v5e-8, ...), as compile-only devices from libtpu.

Slice names follow Cloud TPU's accelerator types. The number counts TensorCores on v4 and v5p (two
per chip, fused into one "megacore" JAX device) and chips on v5e and v6e (one core each):

  v4-8, v5p-8: 4 chips (2x2x1), one host     v5e-8, v6e-8: 8 chips (2x4), one host

Needs libtpu (``pip install -e ".[tpu]"``); nothing here needs a TPU.
"""

from __future__ import annotations

import dataclasses
import os
import re

from drope_jax.errors import ConfigError

# 3D tori (v4, v5p): TensorCores -> chip grid; hosts of 2x2x1 chips.
_CUBE_SHAPES = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8", 512: "4x8x8",
                1024: "8x8x8", 2048: "8x8x16", 4096: "8x16x16"}
# 2D tori (v5e, v6e): chips -> chip grid; one host of 8 chips up to 8, hosts of 2x2 beyond.
_GRID_SHAPES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


class TpuUnavailable(RuntimeError):
    """libtpu is missing or refused the topology; the message says how to install it."""


@dataclasses.dataclass(frozen=True)
class Generation:
    libtpu_name: str  # the prefix of libtpu's topology names
    hbm_gib: int  # per chip
    cores_per_count: int  # the slice number counts TensorCores (2 per chip) or chips (1)
    chip_config: str  # "megacore": both TensorCores of a chip are one JAX device
    shapes: dict


GENERATIONS = {
    "v4": Generation("v4", 32, 2, "megacore", _CUBE_SHAPES),
    "v5p": Generation("v5p", 95, 2, "default", _CUBE_SHAPES),
    "v5e": Generation("v5e", 16, 1, "default", _GRID_SHAPES),
    "v6e": Generation("v6e", 32, 1, "default", _GRID_SHAPES),
}
_ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    name: str  # e.g. "v5p-64"
    generation: str
    topology: str  # chip grid, e.g. "2x4x4"
    chips: int
    hbm_gib: int

    @property
    def hbm_bytes(self) -> int:
        return self.hbm_gib * 2**30

    def devices(self) -> list:
        """One compile-only device per chip (megacore on v4/v5p), on this CPU-only host."""
        gen = GENERATIONS[self.generation]
        dims = [int(d) for d in self.topology.split("x")]
        single_host_grid = len(dims) == 2 and self.chips <= 8
        host_bounds = (dims[0], dims[1], 1) if single_host_grid else (min(dims[0], 2), min(dims[1], 2), 1)
        try:
            from jax.experimental import topologies
            _quiet_libtpu()
            topo = topologies.get_topology_desc(
                platform="tpu", topology_name=f"{gen.libtpu_name}:{self.topology}", chip_config_name=gen.chip_config,
                chips_per_host_bounds=host_bounds, num_slices=1)
        except Exception as e:  # libtpu missing, or refusing the description
            raise TpuUnavailable(f"cannot describe TPU slice {self.name} ({e}); AOT compilation needs libtpu: "
                               'pip install -e ".[tpu]"') from e
        devices = list(topo.devices)
        if len(devices) != self.chips:
            raise TpuUnavailable(f"libtpu described {self.name} with {len(devices)} devices, expected {self.chips}")
        return devices


def parse_slice(name: str) -> TpuSlice:
    """``v5p-64`` -> its chips, grid and HBM. An unknown name raises ConfigError listing the known ones."""
    m = re.fullmatch(r"(v\d+[a-z]*|v5litepod|v6litepod)-(\d+)", name.strip().lower())
    gen_name = _ALIASES.get(m.group(1), m.group(1)) if m else None
    gen = GENERATIONS.get(gen_name)
    if gen is None or int(m.group(2)) not in gen.shapes:
        raise ConfigError(f"unknown TPU topology {name!r}; known: {', '.join(known_slices())}")
    count = int(m.group(2))
    return TpuSlice(f"{gen_name}-{count}", gen_name, gen.shapes[count], count // gen.cores_per_count, gen.hbm_gib)


def known_slices() -> list[str]:
    return [f"{g}-{n}" for g, gen in GENERATIONS.items() for n in gen.shapes]


def _quiet_libtpu() -> None:
    # libtpu otherwise asks the GCE metadata server what it runs on. Several processes may hold libtpu
    # at once here: each only describes a topology, none owns a chip. TPU_ACCELERATOR_TYPE stays unset
    # (one line of warning): libtpu reads it once per process, and a process may describe several slices.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
