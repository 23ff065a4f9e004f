"""The model's shape: a frozen dataclass that conversion, tests and training all build from."""

from __future__ import annotations

import dataclasses

from drope_jax.errors import ConfigError

QK_NORM_KINDS = ("none", "proj", "head")
# config.model.remat -> the jax.checkpoint_policies member each layer is rematerialized with (None: no remat)
REMAT_POLICIES = {"none": None, "full": "nothing_saveable", "dots": "dots_saveable",
                  "dots_no_batch": "dots_with_no_batch_dims_saveable"}
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash")  # see drope_jax/model/attention.py
KERNEL_BACKENDS = ("auto", "xla", "pallas")  # Pallas kernels or XLA: see loss.py, mlp_kernels.py, norm_kernels.py


def _field(kind: str, default=dataclasses.MISSING):
    """A ModelConfig field of ``kind``: "shape" (changes parameter shapes), "math" (changes outputs only)
    or "run" (how this run computes: dtypes, remat, kernels). Every list of model fields derives from these."""
    return dataclasses.field(default=default, metadata={"kind": kind})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = _field("shape")
    d_model: int = _field("shape")
    num_layers: int = _field("shape")
    num_heads: int = _field("shape")
    num_kv_heads: int = _field("shape")
    mlp_dim: int = _field("shape")
    head_dim: int = _field("shape", 0)  # 0: d_model // num_heads
    tie_embeddings: bool = _field("shape", False)
    attention_bias: bool = _field("shape", False)  # biases on q, k and v (Qwen2)
    # "proj": the official DroPE QK-norm, one RMSNorm over the whole q (and k) projection,
    # before the split into heads. "head": RMSNorm over head_dim, per head.
    qk_norm: str = _field("shape", "none")
    rope_theta: float = _field("math", 10000.0)
    norm_eps: float = _field("math", 1e-5)
    param_dtype: str = _field("run", "float32")
    compute_dtype: str = _field("run", "bfloat16")
    remat: str = _field("run", "none")  # acts through the layer scan; fully unrolled, XLA decides (performance.md)
    scan_unroll: int = _field("run", 1)  # layers per iteration of the layer scan: >1 lets XLA fuse across layers
    # "auto": splash on TPU, cuDNN on GPU, XLA elsewhere, by the platform the step is compiled for
    attention_backend: str = _field("run", "auto")
    loss_backend: str = _field("run", "auto")  # "auto": Pallas kernels on a single GPU, else XLA (loss.py)
    mlp_backend: str = _field("run", "auto")  # the SwiGLU's backward, chosen the same way (mlp_kernels.py)
    norm_backend: str = _field("run", "auto")  # the residual add + RMSNorm's backward, the same way (norm_kernels.py)
    init_std: float = _field("run", 0.02)

    @classmethod
    def names(cls, *kinds: str) -> tuple[str, ...]:
        """The fields of the given kinds ("shape", "math", "run"), in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["kind"] in kinds)

    @classmethod
    def defaults(cls) -> dict:
        """Every field that has a default, with it."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @classmethod
    def from_dict(cls, fields: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"config.model has unknown keys {unknown}; valid keys: {sorted(known)}")
        return cls(**fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> ModelConfig:
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.model.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"config.model.num_heads ({self.num_heads}) must be divisible by "
                f"config.model.num_kv_heads ({self.num_kv_heads})"
            )
        if not self.head_dim and self.d_model % self.num_heads:
            raise ConfigError(
                f"config.model.d_model ({self.d_model}) is not divisible by num_heads ({self.num_heads}); "
                "set config.model.head_dim explicitly"
            )
        if self.dim_per_head % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.dim_per_head}")
        for name, allowed in (("qk_norm", QK_NORM_KINDS), ("remat", REMAT_POLICIES),
                              ("param_dtype", DTYPES), ("compute_dtype", DTYPES),
                              ("attention_backend", ATTENTION_BACKENDS), ("loss_backend", KERNEL_BACKENDS),
                              ("mlp_backend", KERNEL_BACKENDS), ("norm_backend", KERNEL_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config.model.{name}={getattr(self, name)!r}; choose one of {tuple(allowed)}")
        return self

    def num_params(self, include_embeddings: bool = True) -> int:
        d, h, f = self.d_model, self.dim_per_head, self.mlp_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        qk = {"none": 0, "proj": h * (self.num_heads + self.num_kv_heads), "head": 2 * h}[self.qk_norm]
        bias = h * (self.num_heads + 2 * self.num_kv_heads) if self.attention_bias else 0
        per_layer = attn + bias + 3 * d * f + 2 * d + qk
        total = self.num_layers * per_layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total
