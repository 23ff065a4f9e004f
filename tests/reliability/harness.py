"""Running the tiny run as a real program (``launch/tpu_run.py``) and reading what it left behind."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import tiny

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILE = pathlib.Path(tiny.__file__).resolve()
STEP_LINE = r"^step +(\d+)/"  # a progress line, capturing its step


def step_line(step: int) -> str:
    """The regex of step ``step``'s progress line."""
    return rf"^step +{step}/"


def config(**sections):
    c = tiny.get_config()
    for name, values in sections.items():
        c[name].update(values)
    return c


def flags(**sections) -> list[str]:
    """``--config.section.key=value`` overrides, as a user would type them."""
    return [f"--config.{name}.{k}={v}" for name, values in sections.items() for k, v in values.items()]


def program_env(devices: int, env: dict | None = None) -> dict:
    """A launched program's environment: ``devices`` simulated CPU devices, this process's other XLA flags
    (so compiled programs are shared through the cache), and ``env``."""
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"{xla_flags} --xla_force_host_platform_device_count={devices}", **(env or {}))


def pair_envs() -> list[dict]:
    """The variables that make two launched programs the two processes of one job."""
    port = free_port()
    return [dict(DROPE_COORDINATOR=f"localhost:{port}", DROPE_NUM_PROCESSES="2", DROPE_PROCESS_ID=str(i))
            for i in range(2)]


class Run:
    """One ``launch/tpu_run.py`` process; its output is read as it comes."""

    def __init__(self, workdir, *overrides, devices: int = 8, env: dict | None = None, cache_dir=None,
                 max_file_bytes: int | None = None):
        full_env = program_env(devices, env)
        if cache_dir:
            full_env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        self.started = time.time()
        command = [sys.executable, str(REPO / "launch" / "tpu_run.py"), f"--config={CONFIG_FILE}",
                   f"--workdir={workdir}", *overrides]
        if max_file_bytes is not None:  # a full disk from the start: limit, then exec the program
            command = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, "
                       "(int(sys.argv[1]), resource.RLIM_INFINITY)); os.execv(sys.executable, sys.argv[2:])",
                       str(max_file_bytes), *command]
        self.proc = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.first_step_after: float | None = None  # seconds from the launch to the first progress line
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if self.first_step_after is None and re.search(STEP_LINE, line):
                self.first_step_after = time.time() - self.started
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match | None:
        """The first new line matching ``pattern``; None if the process ended first."""
        deadline = time.time() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.time(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"no line matching {pattern!r} after {timeout}s:\n" + self.output()) from None
            if line is None:
                self._queue.put(None)
                return None
            self.lines.append(line)
            if m := re.search(pattern, line):
                return m

    def finish(self, timeout: float = 180) -> int:
        """Waits for the exit; the return code."""
        self.wait_for(r"(?!)", timeout)
        return self.proc.wait(timeout)

    def signal(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def output(self) -> str:
        return "\n".join(self.lines)


def limit_file_size(max_bytes: int, pid: int = 0) -> None:
    """A full disk, as far as process ``pid`` (0: this one) can tell: writing past ``max_bytes`` in any
    file fails (EFBIG; Python ignores the SIGXFSZ that comes with it)."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_bytes, resource.RLIM_INFINITY))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def metric_records(workdir) -> list[dict]:
    """Every record of metrics.jsonl: a resumed run logs again the steps after its checkpoint."""
    with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def losses(workdir) -> dict[int, float]:
    """The last logged loss of each step."""
    return {r["step"]: r["loss"] for r in metric_records(workdir)}


def complete_steps(workdir) -> list[int]:
    """Checkpoints Orbax finished (renamed from their temporary name), oldest first."""
    root = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def incomplete_saves(workdir) -> list[str]:
    root = pathlib.Path(workdir) / "checkpoints"
    return sorted(p.name for p in root.iterdir() if "tmp" in p.name) if root.is_dir() else []


def snapshot(directory) -> list[tuple[str, int, int]]:
    """Every file under ``directory`` with its size and mtime: equal snapshots mean nothing was touched."""
    root = pathlib.Path(directory)
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def assert_losses_equal(workdir, reference: dict[int, float], rtol: float = 0.0) -> None:
    """Every logged loss (first runs and re-runs after a resume alike) equals the uninterrupted run's."""
    records = metric_records(workdir)
    assert sorted({r["step"] for r in records}) == sorted(reference), "not every step was logged"
    for r in records:
        ref = reference[r["step"]]
        assert abs(r["loss"] - ref) <= rtol * abs(ref), f"step {r['step']}: loss {r['loss']!r} vs {ref!r}"


class Reference:
    """An uninterrupted run: its workdir (checkpoints 2, 4, ..., 12) and its loss per step."""

    def __init__(self, workdir, losses: dict[int, float]):
        self.workdir = pathlib.Path(workdir)
        self.losses = losses

    def checkpoint_copy(self, workdir, *steps: int) -> pathlib.Path:
        """A new workdir holding copies of some of the reference's checkpoints."""
        for step in steps:
            shutil.copytree(self.workdir / "checkpoints" / str(step), pathlib.Path(workdir) / "checkpoints" / str(step))
        return pathlib.Path(workdir)
