"""The model as pure data: graphdef, parameter dicts and their shardings, created already sharded."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from drope_jax import sharding
from drope_jax.model.config import ModelConfig
from drope_jax.model.transformer import Transformer


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: usable as a static jit argument
class ModelSpec:
    """Everything needed to apply and place a model without building it on a device."""

    cfg: ModelConfig
    graphdef: nnx.GraphDef
    abstract_params: dict  # pure dict of jax.ShapeDtypeStruct
    logical_params: dict  # pure dict of logical PartitionSpecs

    def shardings(self, mesh):
        return sharding.tree_shardings(self.logical_params, self.abstract_params, mesh)

    def placed_params(self, mesh) -> dict:
        """The parameters' ShapeDtypeStructs, each with its sharding on ``mesh``."""
        return sharding.with_shardings(self.abstract_params, self.shardings(mesh))


def model_spec(cfg: ModelConfig) -> ModelSpec:
    abstract_model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract_model)
    return ModelSpec(cfg, graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(nnx.get_partition_spec(state)))


def init_params(spec: ModelSpec, seed: int, mesh) -> dict:
    """Random parameters, each created directly in its shard."""
    def init():
        return nnx.to_pure_dict(nnx.state(Transformer(spec.cfg, nnx.Rngs(seed))))

    return jax.jit(init, out_shardings=spec.shardings(mesh))()


def apply(spec: ModelSpec, params: dict, tokens_BT, pos, *, use_qk_norm: bool = True, positions_BT=None,
          segment_ids_BT=None, cache=None, query_chunk=None, pos_table=None):
    """Logits, or (logits, cache) with a KV cache; see ``Transformer.__call__``."""
    return nnx.merge(spec.graphdef, params)(tokens_BT, pos, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT,
                                            use_qk_norm=use_qk_norm, cache=cache, query_chunk=query_chunk,
                                            pos_table=pos_table)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
