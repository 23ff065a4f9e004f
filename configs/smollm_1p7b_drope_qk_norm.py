"""DroPE recalibration of SmolLM-1.7B with QK-norm (official run config smollm_1_7b_drope_qk_norm): as
configs/smollm_1p7b_drope.py, plus an RMSNorm over the whole q and k projections, started at 1.

  python launch/tpu_run.py --config=configs/smollm_1p7b_drope_qk_norm.py:/models/SmolLM-1.7B --workdir=DIR \
      --config.data.path=DATA
"""

from drope_jax.run_config import sibling_config


def get_config(hf_dir: str = ""):
    c = sibling_config(__file__, "smollm_1p7b_drope.py").get_config(hf_dir)
    c.model.qk_norm = "proj"  # one RMSNorm over the whole q and k projections, started at 1
    return c
