"""Multi-host start-up: ``jax.distributed.initialize`` where the platform needs it, and nowhere else."""

from __future__ import annotations

import os

import jax


def initialize_if_needed() -> None:
    """Joins the other processes of a multi-host job; a single process does nothing.

    - explicit: DROPE_COORDINATOR=host:port, DROPE_NUM_PROCESSES, DROPE_PROCESS_ID (any platform,
      including several CPU processes on one machine);
    - a TPU VM pod slice (several TPU workers): jax finds its peers itself;
    - SLURM with more than one task: jax reads the SLURM environment.
    """
    if "DROPE_COORDINATOR" in os.environ:
        if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(os.environ["DROPE_COORDINATOR"],
                                   num_processes=int(os.environ["DROPE_NUM_PROCESSES"]),
                                   process_id=int(os.environ["DROPE_PROCESS_ID"]))
    elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        jax.distributed.initialize()
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
