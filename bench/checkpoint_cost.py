"""Seconds per checkpoint save and restore, with and without fingerprints (drope_jax/train/fingerprint.py).

  python bench/checkpoint_cost.py [--config=configs/0p5b_16b.py] [--config.model.num_layers=4 ...]
      [--rounds=5] [--warmup=1] [--dir=/local/disk/tmp]

Builds the config's train state (parameters, AdamW moments, step) with the project's setup code on all
devices, and saves and restores it through the real Checkpointer in a temporary directory under --dir. A
round saves and restores once in each mode, alternating; the medians over --rounds rounds after --warmup
untimed ones are printed. "save, blocking" is what the training loop waits for (Orbax then writes in the
background); "save, committed" is until the checkpoint is complete on disk; "restore" until every array is
on its devices (with fingerprints: also verified).
"""

import pathlib
import statistics
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from drope_jax.model.state import count_params
from drope_jax.train import checkpoint, fingerprint
from drope_jax.train.setup import make_setup

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "0p5b_16b.py"), "Run config file.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds; the medians are printed.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed rounds first (compilation, file system caches).")
_DIR = flags.DEFINE_string("dir", None, "Where the temporary checkpoints go (default: the system's temp dir).")

MODES = {"without fingerprints": False, "with fingerprints": True}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_round(ckpt, step, state, abstract, meta) -> dict[str, float]:
    times = {"save, blocking": seconds(lambda: ckpt.save(step, state, {}, dict(meta, step=step)))}
    times["save, committed"] = times["save, blocking"] + seconds(ckpt.wait)
    times["restore"] = seconds(lambda: jax.block_until_ready(ckpt.restore(step, abstract)))
    return times


def main(argv):
    del argv
    setup = make_setup(_CONFIG.value)
    with jax.set_mesh(setup.mesh):
        state = setup.fresh_state()
        abstract = setup.abstract_state()
        meta = {"model": setup.plan.model.to_dict(), "process_count": jax.process_count()}
        gigabytes = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e9
        with tempfile.TemporaryDirectory(dir=_DIR.value) as root:
            ckpts = {mode: checkpoint.Checkpointer(pathlib.Path(root) / mode.replace(" ", "_"), keep=2,
                                                   async_save=setup.config.checkpoint.async_save, fingerprints=on)
                     for mode, on in MODES.items()}
            rounds = {mode: [] for mode in MODES}
            for step in range(_WARMUP.value + _ROUNDS.value):
                for mode, ckpt in ckpts.items():
                    rounds[mode].append(one_round(ckpt, step, state, abstract, meta))
            alone = [seconds(lambda: fingerprint.of_arrays(state)) for _ in range(_ROUNDS.value)]
            for ckpt in ckpts.values():
                ckpt.close()
    devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"{devices} | {count_params(setup.spec.abstract_params):,} parameters | train state {gigabytes:.2f} GB "
          f"({len(jax.tree.leaves(state))} arrays) | medians of {_ROUNDS.value} rounds after {_WARMUP.value} warm-up")
    print(f"{'':<18}" + "".join(f"{mode:>22}" for mode in MODES))
    for row in ("save, blocking", "save, committed", "restore"):
        medians = [statistics.median(r[row] for r in rounds[mode][_WARMUP.value:]) for mode in MODES]
        print(f"{row:<18}" + "".join(f"{m:>20.3f} s" for m in medians))
    print(f"{'fingerprint alone':<18}{'':>22}{statistics.median(alone):>20.3f} s")


if __name__ == "__main__":
    app.run(main)
