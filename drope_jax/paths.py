"""Local and cloud paths (``gs://...``) in one type, and the two things cloud storage cannot do.

Every path the package reads or writes is an ``etils.epath.Path``: pathlib for local paths, the bucket's
API (through gcsfs) for ``gs://``. Orbax and tensorstore write checkpoints to either natively. What
object storage lacks is handled here:

- appending to a file: metrics.jsonl, TensorBoard and W&B files are written in a local mirror of the
  workdir and copied whole to the bucket (``Mirror``);
- reading a file in place: ArrayRecord shards and safetensors are read from a local copy (``local_copy``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

import fsspec.config
from etils import epath

CLOUD_PREFIXES = ("gs://", "s3://")

# gcsfs caches directory listings per process; a listing made before another process (or tensorstore)
# wrote a checkpoint would then hide it. Listings are cheap beside what a run writes.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


def path(p) -> epath.Path:
    return p if isinstance(p, epath.Path) else epath.Path(p)


def is_cloud(p) -> bool:
    return str(p).startswith(CLOUD_PREFIXES)


def absolute(p) -> epath.Path:
    return path(p) if is_cloud(p) else path(p).absolute()


def cloud_glob(pattern: str) -> list[epath.Path]:
    """The files a glob over a cloud path matches (``gs://b/dir/*.jsonl``; epath refuses ``**`` on buckets),
    sorted; a pattern without wildcards is the one file it names."""
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), None)
    if fixed is None:
        return [path(pattern)] if path(pattern).is_file() else []
    return sorted(f for f in path("/".join(parts[:fixed])).glob("/".join(parts[fixed:])) if f.is_file())


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "drope_jax"


def local_dir(kind: str, p) -> pathlib.Path:
    """A folder of this host's cache for ``p``, named after it (``kind``: data, runs, ...)."""
    name = str(p).rstrip("/")
    return cache_root() / kind / f"{pathlib.PurePosixPath(name).name}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"


def copy_file(src, dst) -> None:
    """Copies one file, streaming; the destination appears whole: a cloud object when its upload completes,
    a local file by a rename from a temporary name."""
    src, dst = path(src), path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    target = dst if is_cloud(dst) else dst.with_name(f".{dst.name}.{os.getpid()}.partial")  # processes of a host
    with src.open("rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 16 << 20)
    if target != dst:
        os.replace(target, dst)


def files_under(root) -> list[epath.Path]:
    """Every file below ``root``, by listing each folder (epath refuses ``**`` globs on buckets)."""
    found = []
    for entry in path(root).iterdir():
        found += files_under(entry) if entry.is_dir() else [entry]
    return found


def local_copy(p) -> pathlib.Path:
    """``p`` itself when local; for a cloud directory, a local copy of it (files of the same name and size
    are not fetched again, so a relaunch on the same host copies nothing)."""
    if not is_cloud(p):
        return pathlib.Path(p)
    src, dst = path(p), local_dir("data", p)
    for f in files_under(src):
        target = dst / os.path.relpath(str(f), str(src))
        if not (target.is_file() and target.stat().st_size == f.stat().length):
            copy_file(f, target)
    return dst


class Mirror:
    """Files a run appends to, kept in a local directory that ``sync`` copies to the workdir.

    For a local workdir the mirror is the workdir itself and ``sync`` does nothing. For a cloud one it is a
    local directory that starts with the workdir's copies of ``keep`` (so a relaunch appends to its
    metrics.jsonl), and ``sync`` uploads every file that changed since the last sync."""

    def __init__(self, workdir, keep: tuple[str, ...] = ()):
        self.workdir = path(workdir)
        self.cloud = is_cloud(workdir)
        self.local = local_dir("runs", workdir) if self.cloud else pathlib.Path(workdir)
        if self.cloud:  # the workdir holds the truth: what an earlier launch left here was synced or is lost
            shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)
        self._synced: dict[str, tuple[int, float]] = {}
        if self.cloud:
            for name in keep:
                if (self.workdir / name).exists():
                    copy_file(self.workdir / name, self.local / name)

    def sync(self) -> None:
        if not self.cloud:
            return
        for f in files_under(self.local):
            if f.name.startswith("."):
                continue
            stat = os.stat(f)
            key = os.path.relpath(f, self.local)
            if self._synced.get(key) != (stat.st_size, stat.st_mtime):
                copy_file(f, self.workdir / key)
                self._synced[key] = (stat.st_size, stat.st_mtime)
