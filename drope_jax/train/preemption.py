"""Preemption: on SIGTERM, every process stops before the same step, so the run can save and exit.

One process catches SIGTERM itself. Several processes use JAX's preemption sync service (through
Orbax): whichever process is signalled, the coordination service picks one step for all of them,
and ``reached`` turns true at that step everywhere. Every process must call ``reached`` once per
step, with the same step numbers.
"""

from __future__ import annotations

import signal
import threading

import jax


class Watch:
    """``with Watch(checkpointer) as w: ... if w.reached(step): save and stop``."""

    def __init__(self, checkpointer):
        self._checkpointer = checkpointer
        self._signalled = threading.Event()
        self._previous = None
        self.stopped_at: int | None = None

    def __enter__(self) -> Watch:
        # With several processes, JAX's own SIGTERM handler feeds the sync service; keep it.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._signalled.set())
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def reached(self, step: int) -> bool:
        """True if the run must stop before ``step`` (the same answer on every process)."""
        if jax.process_count() == 1:
            hit = self._signalled.is_set()
        else:
            hit = self._checkpointer.manager.reached_preemption(step)
        if hit:
            self.stopped_at = step
        return hit
