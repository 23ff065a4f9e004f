"""Flax parameters -> a Hugging Face checkpoint directory that ``from_pretrained`` loads.

A RoPE-phase model becomes LlamaForCausalLM (Qwen2ForCausalLM with attention biases); a NoPE one becomes
SmolLM3ForCausalLM with every layer NoPE. QK-norm models, and NoPE models with biases, have no stock
architecture: they get the official DroPE format (llama_drope / qwen2_drope) and our modelling file,
loaded with ``trust_remote_code=True``.

A NoPE model can carry the DroPE paper's softmax temperature past the context (``hf/temperature.py``):
folded into its queries for one length (any format, stock included), or applied at run time from the
input's length by our modelling file (the DroPE format). An export always carries a tokenizer when the run's
is known: a Hugging Face source's, the training corpus's, or the byte-level one (``byte_tokenizer``).
"""

from __future__ import annotations

import json
import math
import pathlib

import ml_dtypes
import numpy as np
from flax import traverse_util

from drope_jax import paths, sharding
from drope_jax.data import pipeline
from drope_jax.hf import byte_tokenizer, configs, load, weights
from drope_jax.hf import temperature as hf_temperature
from drope_jax.model.config import ModelConfig
from drope_jax.model.state import model_spec
from drope_jax.run_config import load_run_config, qk_norm_applies
from drope_jax.train import checkpoint

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
MAX_SHARD_BYTES = 5 * 2**30
BYTE_VOCAB, BYTE_EOS = 257, 256  # the byte-level tokenizer: bytes 0-255, then EOS
MODELING_FILE = pathlib.Path(__file__).with_name(f"{configs.REMOTE_CODE_MODULE}.py")


def _shards(table, cfg: ModelConfig, itemsize: int, max_bytes: int) -> list[list[weights.Rule]]:
    """Rules grouped into files of at most ``max_bytes`` (one Flax parameter never straddles two)."""
    shards, size = [[]], 0
    for rule in table:
        nbytes = math.prod(rule.hf_shape) * itemsize * (cfg.num_layers if rule.per_layer else 1)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(rule)
        size += nbytes
    return shards


def write_weights(out, flat_params: dict, table, cfg: ModelConfig, dtype: str,
                  max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    from safetensors.numpy import save  # imported here: only the bridge needs safetensors

    np_dtype = DTYPES[dtype]
    groups = _shards(table, cfg, np.dtype(np_dtype).itemsize, max_shard_bytes)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = dict(weights.hf_tensors(flat_params, group, cfg.num_layers, np_dtype))
        (out / fname).write_bytes(save(tensors, metadata={"format": "pt"}))  # local or cloud
        weight_map.update({name: fname for name in tensors})
        total += sum(t.nbytes for t in tensors.values())
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def export_params(params: dict, cfg: ModelConfig, out, *, position: str, qk_norm_active: bool = True,
                  dtype: str = "float32", source_dir=None, token_ids: dict | None = None,
                  temperature: hf_temperature.ExportTemperature | None = None,
                  max_shard_bytes: int = MAX_SHARD_BYTES) -> dict:
    """Writes ``params`` as a Hugging Face checkpoint in ``out``; returns its config.json.

    ``position``: "rope" or "nope", the mode the weights were trained for. ``qk_norm_active=False`` drops
    QK-norm weights the model has but did not use (a run that switches QK-norm on at the flip).
    ``source_dir``: a Hugging Face directory (or a tokenizer's) whose tokenizer files the export carries, and
    its token ids unless ``token_ids`` gives them. A byte-level model (257 tokens) without either gets the
    byte-level tokenizer. ``temperature``: see ``hf.temperature.ExportTemperature`` (NoPE models only).
    """
    if dtype not in DTYPES:
        raise configs.HFFormatError(f"--dtype={dtype!r}; choose one of {sorted(DTYPES)}")
    if temperature is not None and position != "nope":
        raise configs.HFFormatError(f"a softmax temperature applies to NoPE (DroPE) models; this one is in phase "
                                    f"{position!r}: export it with --temperature=off")
    out = paths.path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = token_ids if token_ids is not None else configs.token_ids(source_dir) if source_dir else {}
    bytes_model = not source_dir and not ids and cfg.vocab_size == BYTE_VOCAB
    if bytes_model:
        ids = {"eos_token_id": BYTE_EOS, "pad_token_id": BYTE_EOS}  # EOS after every document, no BOS
    max_pos = (configs.read_config_json(source_dir).get("max_position_embeddings", 2048)
               if source_dir and (paths.path(source_dir) / "config.json").is_file() else 2048)
    hf_cfg = configs.hf_config(cfg, position=position, qk_norm_active=qk_norm_active, dtype=dtype, ids=ids,
                               max_position_embeddings=max_pos,
                               runtime_temperature=temperature is not None and not temperature.fold_length)
    qk_norm_exported = hf_cfg.get("attention_type", "").startswith("qk_norm")
    if temperature is not None:
        hf_cfg.update(temperature.config_json())
        if temperature.fold_length:
            params = hf_temperature.fold(params, temperature.folded_beta, into_qk_norm=qk_norm_exported)
    table = weights.rules(cfg, qk_norm=qk_norm_exported)
    write_weights(out, traverse_util.flatten_dict(params, sep="/"), table, cfg, dtype, max_shard_bytes)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    _write_generation_config(out, source_dir, ids)
    if "auto_map" in hf_cfg:
        paths.copy_file(MODELING_FILE, out / MODELING_FILE.name)
    if source_dir:
        for name in load.TOKENIZER_FILES:
            if name not in ("config.json", "generation_config.json") and (paths.path(source_dir) / name).is_file():
                paths.copy_file(paths.path(source_dir) / name, out / name)
    elif bytes_model:
        byte_tokenizer.write(out)
    return hf_cfg


def _write_generation_config(out, source_dir, ids: dict) -> None:
    source = paths.path(source_dir) / "generation_config.json" if source_dir else None
    if source is not None and source.is_file():
        paths.copy_file(source, out / "generation_config.json")
    else:
        (out / "generation_config.json").write_text(json.dumps({"_from_model_config": True, **ids}, indent=2))


def export_checkpoint(workdir, out, *, step: int | None = None, dtype: str = "float32", source_dir=None,
                      temperature: str | float = "auto", temperature_length: int | None = None,
                      max_shard_bytes: int = MAX_SHARD_BYTES, log=print) -> dict:
    """Exports checkpoint ``step`` (default: the newest) of ``workdir``. The phase and whether QK-norm was in
    use come from the checkpoint's metadata. ``source_dir`` defaults to ``workdir/hf_source`` when an import
    made it, else to the training corpus's tokenizer. ``temperature``: "auto" (the c that launch/evaluate.py
    fitted for this checkpoint, in ``workdir/eval/results.json``, if any), "off", or c; ``temperature_length``
    folds it in for that many tokens (see ``hf.temperature.ExportTemperature``)."""
    workdir = paths.path(workdir)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
    steps = ckpt.all_steps()
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in steps:
        raise configs.HFFormatError(f"{workdir}/checkpoints has no checkpoint at step {step}; it has {steps}")
    meta = ckpt.meta(step)
    chosen = hf_temperature.choose(workdir, step, meta["phase"], temperature, temperature_length, log)
    cfg = ModelConfig.from_dict(meta["model"])
    params = ckpt.restore_params(step, model_spec(cfg).placed_params(sharding.make_mesh()))
    ckpt.close()
    qk_active = qk_norm_applies(meta["phase"], bool(meta.get("qk_norm_at_flip")))
    token_ids = None
    if source_dir is None and (workdir / load.SOURCE_DIR).is_dir():
        source_dir = workdir / load.SOURCE_DIR
    elif source_dir is None:
        source_dir, token_ids = _corpus_tokenizer(workdir)
    hf_cfg = export_params(params, cfg, out, position=meta["phase"], qk_norm_active=qk_active, dtype=dtype,
                           source_dir=source_dir, token_ids=token_ids, temperature=chosen,
                           max_shard_bytes=max_shard_bytes)
    if hf_cfg["eos_token_id"] is None:
        log("no tokenizer given (--tokenizer): bos/eos/pad ids are unset in config.json")
    log(f"exported {workdir} step {step} ({meta['phase']} phase) to {out} as {hf_cfg['architectures'][0]}"
        + (f" (attention_type {hf_cfg['attention_type']}; load with trust_remote_code=True)"
           if "auto_map" in hf_cfg else ""))
    if chosen is not None:
        log(chosen.describe())
    return hf_cfg


def _corpus_tokenizer(workdir) -> tuple[object, dict | None]:
    """(tokenizer directory, token ids) of the corpus the run trained on, when its config.json names one with a
    Hugging Face tokenizer; (None, None) otherwise (a byte-level corpus gets the byte tokenizer)."""
    if not (workdir / "config.json").is_file():
        return None, None
    data = load_run_config(workdir).data
    if data.source != "arrayrecord" or not data.path:
        return None, None
    corpus = pipeline.Corpus(data.path)
    if not corpus.metadata.get("tokenizer_dir"):
        return None, None
    return corpus.path / corpus.metadata["tokenizer_dir"], {"eos_token_id": corpus.eos_id}
