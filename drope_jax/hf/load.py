"""Hugging Face checkpoint -> Flax parameters: for ``init_from="hf:DIR"`` and for an Orbax workdir.

Every parameter the model has is loaded, or refused by name. The one exception is QK-norm: a model
configured with it, seeded from a checkpoint without it, starts its QK-norm weights at 1 (the official
initialisation), and the log names them.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from drope_jax import paths, sharding
from drope_jax.hf import configs, weights
from drope_jax.model.config import ModelConfig
from drope_jax.model.state import model_spec
from drope_jax.train import checkpoint

# Fields of config.model that must equal the checkpoint's (qk_norm is checked on its own).
# What a Hugging Face checkpoint fixes: shapes and math. QK-norm is compared apart (weights may be added).
MATCHED_FIELDS = tuple(f for f in ModelConfig.names("shape", "math") if f != "qk_norm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
                   "config.json")
SOURCE_DIR = "hf_source"  # in a workdir made by import_to_workdir: the source's config and tokenizer files


def check_fits(source: configs.HFSource, cfg: ModelConfig, where: str) -> None:
    """Refuses a checkpoint whose config.json disagrees with ``cfg``, naming each key."""
    theirs = source.model
    diffs = [f"config.model.{k}={getattr(cfg, k)!r} but config.json gives {getattr(theirs, k)!r}"
             for k in MATCHED_FIELDS if getattr(theirs, k) != getattr(cfg, k)]
    if theirs.qk_norm != "none" and theirs.qk_norm != cfg.qk_norm:
        diffs.append(f"config.model.qk_norm={cfg.qk_norm!r} but the checkpoint has trained "
                     f"{theirs.qk_norm!r} QK-norm weights")
    if diffs:
        raise configs.HFFormatError(f"{where} does not fit the config: {'; '.join(diffs)}")


def _place(host_array: np.ndarray, sharding_):
    return jax.make_array_from_callback(host_array.shape, sharding_, lambda index: host_array[index])


def read_params(hf_dir, source: configs.HFSource, cfg: ModelConfig, abstract: dict, log=print) -> dict:
    """Parameters shaped like ``abstract`` (a pure dict of ShapeDtypeStructs with shardings)."""
    flat_abstract = traverse_util.flatten_dict(abstract, sep="/")
    table = weights.rules(cfg, qk_norm=source.model.qk_norm != "none")
    reader = weights.SafetensorsReader(hf_dir)
    weights.check_tensors(reader, table, cfg.num_layers, cfg.tie_embeddings)
    loaded = {}
    for rule in table:
        want = flat_abstract[rule.flax]
        host = weights.read_param(reader, rule, cfg.num_layers, want.dtype)
        if host.shape != want.shape:
            raise configs.HFFormatError(f"{rule.hf} gives {rule.flax} the shape {host.shape}, the model needs "
                                        f"{want.shape}")
        loaded[rule.flax] = _place(host, want.sharding)
    fresh = sorted(set(flat_abstract) - set(loaded))
    if any("norm" not in name for name in fresh):  # cannot happen unless rules() and the model drift apart
        raise configs.HFFormatError(f"no Hugging Face tensor maps to {fresh}; drope_jax/hf/weights.py needs a rule")
    for name in fresh:
        want = flat_abstract[name]
        loaded[name] = _place(np.ones(want.shape, want.dtype), want.sharding)
    if fresh:
        log(f"hf import: {hf_dir} has no QK-norm weights; initialized to 1: {fresh}")
    if source.position == "mixed":
        log(f"hf import: {hf_dir} uses RoPE in some layers only (SmolLM3 no_rope_layers); its weights are loaded. "
            "A DroPE recalibration trains them NoPE in every layer; to run the original pattern set "
            "config.positions.nope_every (launch/evaluate.py detects it for hf: checkpoints)")
    folded = source.config.get("drope_temperature_folded")
    if folded:
        log(f"hf import: {hf_dir}'s query weights hold a softmax temperature (beta {folded['beta']:.4f}, folded in "
            f"by launch/convert_to_hf.py for {folded['length']} tokens): they are not the trained weights")
    elif source.config.get("temperature_c"):
        log(f"hf import: {hf_dir} applies a softmax temperature at run time (c={source.config['temperature_c']}); "
            "the weights are loaded without it (launch/evaluate.py fits its own)")
    log(f"hf import: loaded {len(table)} parameters from {hf_dir} ({source.model_type}, {source.position})")
    return traverse_util.unflatten_dict(loaded, sep="/")


def load_hf(hf_dir, cfg: ModelConfig | None = None, *, mesh=None, log=print) -> tuple[dict, configs.HFSource]:
    """Parameters of a Hugging Face checkpoint, sharded over ``mesh`` (default: all devices, FSDP), and what
    the checkpoint is. ``cfg`` defaults to the one config.json gives; another one must fit it."""
    source = configs.read_source(hf_dir)
    if cfg is None:
        cfg = source.model
    else:
        check_fits(source, cfg, str(hf_dir))
    abstract = model_spec(cfg).placed_params(sharding.make_mesh() if mesh is None else mesh)
    return read_params(hf_dir, source, cfg, abstract, log=log), source


def load_params(hf_dir, cfg: ModelConfig, fresh_params: dict, log=print) -> dict:
    """``init_from="hf:DIR"``: parameters placed like ``fresh_params``, after checking ``cfg`` fits."""
    source = configs.read_source(hf_dir)
    check_fits(source, cfg, f"config.init_from=hf:{hf_dir}")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), fresh_params)
    return read_params(hf_dir, source, cfg, abstract, log=log)


def import_to_workdir(hf_dir, workdir, *, param_dtype: str = "float32", log=print) -> ModelConfig:
    """Writes the checkpoint as step 0 of ``workdir``, usable by ``init_from=WORKDIR`` and convert_to_hf.py.

    Its metadata carries the phase ("rope", "nope" or "mixed") and the model config, and the source's
    config and tokenizer files are copied to ``workdir/hf_source`` so an export can carry them on.
    """
    workdir = paths.path(workdir)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
    if ckpt.latest_step() is not None:
        raise configs.HFFormatError(f"{workdir} already holds checkpoints; choose a new --workdir")
    cfg = ModelConfig.from_dict({**configs.read_source(hf_dir).model.to_dict(), "param_dtype": param_dtype})
    params, source = load_hf(hf_dir, cfg, log=log)
    meta = {"step": 0, "phase": source.position, "flip_step": None, "tokens": 0, "model": cfg.to_dict(),
            "hf_source": str(paths.absolute(hf_dir))}
    ckpt.save(0, {"params": params}, {}, meta)
    ckpt.wait()
    ckpt.close()
    if jax.process_index() != 0:
        return cfg
    (workdir / SOURCE_DIR).mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (paths.path(hf_dir) / name).is_file():
            paths.copy_file(paths.path(hf_dir) / name, workdir / SOURCE_DIR / name)
    return cfg
