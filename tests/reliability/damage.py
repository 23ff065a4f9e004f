"""Damage to a checkpoint after it was written, as storage and copies do it: flipped bytes that Orbax reads
without complaint, a changed data-iterator position."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from drope_jax.train import fingerprint


def arrays_as_orbax_reads_them(step_dir) -> dict[str, bytes]:
    """Every array of checkpoint ``step_dir``'s state, read by Orbax alone (no fingerprints), as bytes. Orbax
    caches what it read by path, so a path is read once: before or after it was damaged, not both."""
    reader = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),  # whichever devices wrote it
                            reader.metadata(step_dir / "state").item_metadata.tree)
    state = reader.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return {path: np.asarray(x).tobytes() for path, x in zip(fingerprint.leaf_paths(state), jax.tree.leaves(state))}


def flip_bytes(path, at: float = 0.5, count=64) -> None:
    """Flips the lowest bit of ``count`` bytes around the fraction ``at`` of the file at ``path`` (the middle
    by default)."""
    data = bytearray(path.read_bytes())
    centre = min(max(int(len(data) * at), count // 2), len(data) - count // 2)
    for i in range(centre - count // 2, centre + count // 2):
        data[i] ^= 1
    path.write_bytes(bytes(data))


# Where in a file to flip: the middle first. OCDBT packs several arrays into one file, in an order that varies
# from save to save, so the middle of every file may hold arrays of another kind than the one asked for.
PLACES = (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875)


def array_files(step_dir):
    """The files holding the arrays' chunks, largest first."""
    return sorted((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size, reverse=True)


def damage_silently(step_dir, prefix: str, scratch, intact_copy=None) -> list[str]:
    """Flips 64 bytes in an array file of checkpoint ``step_dir``, in its middle where that will do (as in the
    issue), at the first place (``PLACES``, then files largest first) where that changes arrays under
    ``prefix`` (and no others) while Orbax reads them without complaint; returns the arrays changed. Each
    candidate is tried on a copy in ``scratch``. The intact arrays are read from
    ``intact_copy`` (an identical checkpoint) if given, else from ``step_dir``, which this process then must
    not read again."""
    intact = arrays_as_orbax_reads_them(intact_copy or step_dir)
    for j, at in enumerate(PLACES):
        for i, path in enumerate(array_files(step_dir)):
            trial = scratch / f"{step_dir.name}-{j}-{i}"
            shutil.copytree(step_dir, trial)
            flip_bytes(trial / path.relative_to(step_dir), at)
            try:
                read = arrays_as_orbax_reads_them(trial)
                changed = [name for name in intact if read[name] != intact[name]]
            except ValueError:  # damage that Orbax notices: not the case under test
                changed = []
            if changed and all(name.startswith(prefix) for name in changed):
                flip_bytes(path, at)
                return changed
    raise AssertionError(f"no array file of {step_dir} holds {prefix} arrays Orbax would read damaged")


def change_a_digit(path) -> None:
    """The data iterator's state, still valid JSON, with one position changed."""
    text = path.read_text()
    at = next(i for i in range(len(text) // 2, len(text)) if text[i] in "0123456789")
    changed = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]
    assert json.loads(changed) != json.loads(text)
    path.write_text(changed)
