"""Orbax checkpoints of the train state, the data iterator and the run's metadata.

A checkpoint at step ``s`` holds the state after ``s`` updates. Its metadata records the phase
its weights were trained in, the flip step and the model config, so a relaunch knows where it
is and refuses a workdir that belongs to another model. Orbax writes each checkpoint under a
temporary name and renames it when complete, so an interrupted save is never read as whole, and
it deletes old checkpoints only after a newer one is complete. A state with a non-finite value
is never saved, and a failed write (a full disk) raises ``NotSaved``, keeping the complete ones.

Each checkpoint also holds the fingerprints of its contents (``fingerprint.py``), an Orbax item committed
with the others; every read verifies what it reads against them and raises ``fingerprint.Mismatch`` naming
the checkpoint and the arrays that differ. Checkpoints written before fingerprints restore unverified.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from drope_jax import paths
from drope_jax.errors import ConfigError, first_line
from drope_jax.model.config import ModelConfig
from drope_jax.train import fingerprint

# Fields that change parameter shapes; the others (dtypes of compute, remat, ...) may differ on resume.
SHAPE_FIELDS = ModelConfig.names("shape")
FINGERPRINTS = "fingerprints"  # the Orbax item, and the key of the metadata that says the checkpoint has one
_said_unverified: set[str] = set()  # directories whose checkpoints without fingerprints were announced


class NotSaved(RuntimeError):
    """A checkpoint was not written; the complete ones on disk are kept."""


def ensure_writable(directory) -> None:
    """Fails at start-up, before anything compiles, if no checkpoint could be written to ``directory``."""
    directory = paths.path(directory)
    probe = directory / f".write-probe-{jax.process_index()}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 4096)
    except OSError as e:
        raise ConfigError(f"cannot write checkpoints to {directory} ({e.strerror or e}); free space there, fix its "
                          "permissions, or pass another --workdir") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class _IteratorSnapshot:
    """A data-iterator state captured when the checkpoint is taken, saved by Grain's handler."""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


class SaveClock:
    """Checkpoints by time (``config.checkpoint.every_minutes``) beside those by step. The processes of a
    run must save at the same steps, so process 0's clock decides, broadcast to the others, and only at
    every ``check_every``-th step, so the broadcast costs nothing noticeable."""

    def __init__(self, every_minutes: float, check_every: int):
        self.every_s, self.check_every, self.last = every_minutes * 60, max(check_every, 1), time.time()

    def due(self, step: int) -> bool:
        if not self.every_s or step % self.check_every:
            return False
        due = time.time() - self.last >= self.every_s
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(jnp.bool_(due)))
        return due

    def reset(self) -> None:
        self.last = time.time()


class Checkpointer:
    def __init__(self, directory, *, keep: int = 3, preserve_steps=(), async_save: bool = True,
                 fingerprints: bool = True):
        """``fingerprints=False`` saves checkpoints without them (for measuring what they cost)."""
        self.directory = paths.absolute(directory)
        self.fingerprints = fingerprints
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep),
            ocp.checkpoint_managers.CustomSteps(list(preserve_steps)),
        ])
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                                 create=True),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler(), FINGERPRINTS: ocp.JsonCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def meta(self, step: int) -> dict:
        """The run's metadata saved with checkpoint ``step``, verified."""
        return self._read_meta(step)[0]

    def _read_meta(self, step: int) -> tuple[dict, dict | None]:
        """The metadata and the fingerprints (None: written before them) of checkpoint ``step``; raises
        ``fingerprint.Mismatch`` if the metadata differs from its fingerprint or the fingerprints are lost."""
        has_record = (self.directory / str(step) / FINGERPRINTS).exists()
        items = {"meta": ocp.args.JsonRestore(), **({FINGERPRINTS: ocp.args.JsonRestore()} if has_record else {})}
        read = self.manager.restore(step, args=ocp.args.Composite(**items))
        meta, record = read["meta"], read[FINGERPRINTS] if has_record else None
        if record is None and FINGERPRINTS in meta:
            raise fingerprint.Mismatch(f"checkpoint {self.directory / str(step)} lost its fingerprints (its "
                                       f"{FINGERPRINTS}/ folder is missing), so its contents cannot be verified")
        if record is None:
            self._say_unverified()
        elif record.get("format") != fingerprint.FORMAT:
            raise fingerprint.Mismatch(f"checkpoint {self.directory / str(step)} has fingerprints of format "
                                       f"{record.get('format')!r}; this version reads format {fingerprint.FORMAT}")
        elif fingerprint.of_json(meta) != record["meta"]:
            raise self._mismatch(step, "its metadata (meta/)")
        return meta, record

    def _mismatch(self, step: int, what: str) -> fingerprint.Mismatch:
        return fingerprint.Mismatch(f"checkpoint {self.directory / str(step)} does not match the fingerprints saved "
                                    f"with it: {what} changed after it was written (storage or copy damage)")

    def _say_unverified(self) -> None:
        if str(self.directory) not in _said_unverified and jax.process_index() == 0:
            print(f"checkpoints in {self.directory} without fingerprints (written before drope-jax saved them) "
                  "are restored unverified", flush=True)
        _said_unverified.add(str(self.directory))

    def newest_complete(self) -> int | None:
        """The newest complete checkpoint on disk now (rereads the directory)."""
        self.manager.reload()
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Starts writing a checkpoint (asynchronously if so configured); a failure raises ``NotSaved``,
        here or from a later ``save`` or ``wait``."""
        bad = nonfinite_leaves(state)
        if bad:
            raise NotSaved(f"step {step}: the train state has non-finite values in {', '.join(bad[:4])}"
                           f"{' ...' if len(bad) > 4 else ''}; not saved, so {self.kept()}")
        snapshot = _IteratorSnapshot(data_state)
        items = {}
        if self.fingerprints:  # an item of the checkpoint: Orbax commits it with the others or not at all
            meta = {**meta, FINGERPRINTS: fingerprint.FORMAT}
            items[FINGERPRINTS] = ocp.args.JsonSave({
                "format": fingerprint.FORMAT, "arrays": fingerprint.of_arrays(state), "meta": fingerprint.of_json(meta),
                "data": dict(zip(_data_files(jax.process_count()), _every_process(snapshot.get_state())))})
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                data=grain.checkpoint.CheckpointSave(snapshot),
                meta=ocp.args.JsonSave(meta), **items,
            ), force=True)
        except Exception as e:
            raise self._write_failed(e) from e

    def restore(self, step: int, abstract_state, data_iterator=None):
        """The train state placed like ``abstract_state`` (ShapeDtypeStructs with shardings); with
        ``data_iterator``, also moves it to where it was at ``step``. Everything read is verified."""
        meta, record = self._read_meta(step)
        state = self._restore_verified(step, abstract_state, record)
        if data_iterator is not None:
            self._restore_data(step, data_iterator, meta, record)
        return state

    def _restore_verified(self, step: int, abstract, record: dict | None, partial: bool = False):
        """The arrays of ``abstract`` from checkpoint ``step``, read in the dtypes they were saved in, checked
        against their fingerprints in ``record`` (None: unverified), then cast to ``abstract``'s dtypes."""
        saved = abstract if record is None else _in_saved_dtypes(abstract, record["arrays"])
        state = self.manager.restore(step, args=ocp.args.Composite(state=_restore_args(saved, partial)))["state"]
        if record is not None:
            differ = fingerprint.differing(record["arrays"], state)
            if differ:
                raise self._mismatch(step, f"{', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''} "
                                           f"({len(differ)} of {len(fingerprint.leaf_paths(state))} arrays read)")
        return jax.tree.map(lambda x, want: x if x.dtype == want.dtype else x.astype(want.dtype), state, abstract)

    def restore_data(self, step: int, data_iterator) -> None:
        """Moves ``data_iterator`` to where it was at checkpoint ``step``, also when another number of
        processes wrote it: each process saved the states of its own rows of the global batch, so together
        they are every row's, and this process takes its rows' states."""
        self._restore_data(step, data_iterator, *self._read_meta(step))

    def _restore_data(self, step: int, data_iterator, meta: dict, record: dict | None) -> None:
        written_by = meta.get("process_count", 1)
        files = [self.directory / str(step) / "data" / name for name in _data_files(written_by)]
        differ = [] if record is None else _differing_files(files, record["data"])
        if differ:  # every file, on every process: all reach one verdict
            raise self._mismatch(step, f"the data iterator's {', '.join(differ)}")
        if written_by == jax.process_count():
            self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
            return
        rows = [row for f in files for row in json.loads(f.read_text())["parents"]]
        if len(rows) % jax.process_count():
            raise ConfigError(f"checkpoint {step} holds {len(rows)} rows a batch, which {jax.process_count()} "
                              "processes cannot share; relaunch with a number of processes that divides it")
        n = len(rows) // jax.process_count()
        data_iterator.set_state({"parents": rows[jax.process_index() * n:(jax.process_index() + 1) * n]})

    def restore_params(self, step: int, abstract_params):
        """Parameters only, from a checkpoint whose optimizer state may have another structure; verified."""
        record = self._read_meta(step)[1]
        return self._restore_verified(step, {"params": abstract_params}, record, partial=True)["params"]

    def wait(self) -> None:
        """Waits for the save in flight; raises ``NotSaved`` if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(e) from e

    def settle(self) -> None:
        """Lets a save in flight finish while another error stops the run; that error says more than this one."""
        with contextlib.suppress(Exception):
            self.manager.wait_until_finished()

    def set_aside(self, step: int):
        """Renames checkpoint ``step`` out of Orbax's sight (nothing is deleted); returns its new path."""
        target = self.directory / f"{step}.unreadable-{int(time.time())}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices(f"drope_jax set aside checkpoint {step}")
        self.manager.reload()
        return target

    def kept(self) -> str:
        """Names the newest complete checkpoint on disk, which a failed or refused save leaves in place."""
        newest = self.newest_complete()
        where = "none" if newest is None else f"step {newest}"
        return f"the newest complete checkpoint in {self.directory} ({where}) is kept"

    def _write_failed(self, e: Exception) -> NotSaved:
        return NotSaved(f"writing a checkpoint to {self.directory} failed ({first_line(e) or type(e).__name__}); "
                        f"{self.kept()}. Free space there (or fix the file system) and relaunch the same command")

    def close(self) -> None:
        self.manager.close()


@jax.jit
def _finite_flags(tree):
    return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True, tree)


def nonfinite_leaves(tree) -> list[str]:
    """Paths (``params/blocks/...``) of the leaves holding a NaN or an infinity."""
    flags = jax.device_get(_finite_flags(tree))
    return [jax.tree_util.keystr(path, simple=True, separator="/")
            for path, ok in jax.tree_util.tree_flatten_with_path(flags)[0] if not ok]


def _data_files(process_count: int) -> list[str]:
    """The data iterator's files in a checkpoint written by ``process_count`` processes (Grain's names)."""
    return [f"process_{i}-of-{process_count}.json" for i in range(process_count)]


def _every_process(data: bytes) -> list[str]:
    """The fingerprint of each process's ``data``, on every process."""
    digest = fingerprint.of_bytes(data)
    if jax.process_count() == 1:
        return [digest]
    return [bytes(row).hex() for row in multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(digest),
                                                                                        np.uint8))]


def _differing_files(files, saved: dict[str, str]) -> list[str]:
    """Names of the ``files`` missing, or whose bytes differ from their fingerprints in ``saved``."""
    return [f.name if f.exists() else f"{f.name} (missing)" for f in files
            if not f.exists() or fingerprint.of_bytes(f.read_bytes()) != saved.get(f.name)]


def _in_saved_dtypes(abstract, saved: dict[str, dict]):
    """``abstract`` with each array in the dtype it was saved in, so its fingerprint can be checked."""
    def saved_dtype(path, x):
        dtype = jnp.dtype(saved.get(jax.tree_util.keystr(path, simple=True, separator="/"), {}).get("dtype", x.dtype))
        return x if dtype == x.dtype else jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return jax.tree_util.tree_map_with_path(saved_dtype, abstract)


def _restore_args(abstract, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore every leaf of ``abstract`` (ShapeDtypeStructs with shardings) onto its sharding."""
    return ocp.args.PyTreeRestore(
        item=abstract, partial_restore=partial,
        restore_args=jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract))


def check_same_model(meta: dict, cfg: ModelConfig, where) -> None:
    """Refuses to resume a checkpoint of another model shape, before anything is compiled or written."""
    theirs = meta.get("model", {})
    diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {getattr(cfg, k)!r}"
             for k in SHAPE_FIELDS if theirs.get(k) != getattr(cfg, k)]
    if diffs:
        raise ConfigError(f"{where} holds a checkpoint of a different model ({'; '.join(diffs)}); "
                          "use a new --workdir, or match config.model to it. Nothing was overwritten.")


def load_params_from(path, fresh_params: dict, log=print, step: int | None = None) -> dict:
    """Parameters from checkpoint ``step`` (default: the newest) under ``path`` (a workdir or its checkpoints/).

    A parameter the checkpoint lacks keeps its fresh initialization and is named; a parameter the
    model lacks, or one of another shape, is refused by name.
    """
    root = paths.path(path)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    source = Checkpointer(root, async_save=False)
    step = source.latest_step() if step is None else step
    if step is None:
        raise ConfigError(f"config.init_from={str(path)!r} holds no complete checkpoint")
    stored = traverse_util.flatten_dict(dict(source.manager.item_metadata(step)["state"]["params"]), sep="/")
    fresh = traverse_util.flatten_dict(fresh_params, sep="/")
    unexpected = sorted(set(stored) - set(fresh))
    mismatched = [f"{k}: checkpoint {tuple(stored[k].shape)} vs model {fresh[k].shape}"
                  for k in sorted(set(stored) & set(fresh)) if tuple(stored[k].shape) != fresh[k].shape]
    if unexpected or mismatched:
        raise ConfigError(f"config.init_from={str(path)!r} does not fit config.model: "
                          f"unexpected parameters {unexpected}; mismatched shapes {mismatched}")
    missing = sorted(set(fresh) - set(stored))
    wanted = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in fresh.items() if k in stored}
    loaded = traverse_util.flatten_dict(source.restore_params(step, traverse_util.unflatten_dict(wanted, sep="/")),
                                        sep="/")
    source.close()
    if missing:
        log(f"{path} (step {step}): not in the checkpoint, initialized fresh: {missing}")
    log(f"loaded {len(loaded)} parameters from {path}, step {step}")
    return traverse_util.unflatten_dict({**fresh, **loaded}, sep="/")
