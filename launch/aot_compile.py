"""Compile the full sharded train step for a TPU slice on this CPU-only host, and check it fits.

  JAX_PLATFORMS=cpu python launch/aot_compile.py --config=configs/0p5b_16b.py --topology=v5p-8 \
      [--phase=rope] [--config.train.grad_accum=4] [--config.mesh.tensor=2] [--search_grad_accum]

Prints the mesh, per-chip memory (XLA's memory analysis: arguments + outputs + temp - aliased)
against the chip's HBM with FITS / DOES NOT FIT, and the compiled FLOPs. Exits 1 if it does not fit
(XLA refuses to compile a step that overflows HBM; --search_grad_accum then doubles
config.train.grad_accum until one fits).
Slice names count TensorCores on v4/v5p (v5p-8 = 4 chips) and chips on v5e/v6e (v5e-8 = 8 chips).
Needs libtpu: pip install -e ".[tpu]".
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU here is described by libtpu, not attached

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from drope_jax.errors import ConfigError  # noqa: E402
from drope_jax.launch_utils import parse_flags_or_exit  # noqa: E402
from drope_jax.tpu import aot, topology  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/0p5b_16b.py", "Run config file.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-8", "TPU slice, e.g. v4-8, v5e-8, v5p-64, v6e-8.")
_PHASE = flags.DEFINE_enum("phase", None, ["rope", "nope"], "Which phase's step to compile (default: the first).")
_SEARCH = flags.DEFINE_bool("search_grad_accum", False, "If the step does not fit, double config.train.grad_accum "
                            "until it does, and print the setting.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        tpu_slice = topology.parse_slice(_TOPOLOGY.value)
        compile_fn = aot.search_grad_accum if _SEARCH.value else aot.compile_train_step
        report, _ = compile_fn(_CONFIG.value, tpu_slice, _PHASE.value)
    except (ConfigError, topology.TpuUnavailable) as e:
        sys.exit(f"error: {e}")
    except aot.DoesNotFit as e:
        sys.exit(str(e))
    print(aot.describe(report))
    print("RESULT " + json.dumps({"topology": tpu_slice.name, "chips": tpu_slice.chips, "mesh": report.mesh,
                                  "phase": report.phase, "grad_accum": report.grad_accum, "remat": report.remat,
                                  "gib_per_chip": report.bytes_per_chip / 2**30, "hbm_gib": tpu_slice.hbm_gib,
                                  "fits": report.fits, "tflops_per_chip": report.flops_per_chip / 1e12,
                                  "model_tflops_per_chip": report.model_flops_per_chip / 1e12}))
    if not report.fits:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
