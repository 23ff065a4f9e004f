"""Train (or resume) a DroPE run.

  python launch/tpu_run.py --config=configs/tiny.py --workdir=/tmp/tiny [--config.train.total_steps=100]

Relaunching the same command resumes from the newest complete checkpoint in the workdir. On SIGTERM
(a preemption notice) the run finishes its step, saves a checkpoint and exits 0.
Every host of a TPU pod slice or multi-node GPU job runs the same command.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from drope_jax import distributed
from drope_jax.errors import ConfigError
from drope_jax.launch_utils import define_compilation_cache_flag, parse_flags_or_exit, use_compilation_cache
from drope_jax.train import checkpoint, loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Run config file.")
_CACHE = define_compilation_cache_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and evals go.", required=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the progress output
    use_compilation_cache(_CACHE.value)
    distributed.initialize_if_needed()
    try:
        loop.run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, loop.TrainingStopped, checkpoint.NotSaved) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
