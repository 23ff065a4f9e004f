"""DroPE recalibration of SmolLM-360M with QK-norm (official run config smollm_360m_drope_qk_norm):
as configs/smollm_360m_drope.py, plus an RMSNorm over the whole q and k projections, started at 1. The
paper's recipe with QK-norm (lr 1e-3, cosine, weight decay 0.1) is configs/smollm_360m_drope_paper.py.

  python launch/tpu_run.py --config=configs/smollm_360m_drope_qk_norm.py:/models/SmolLM-360M --workdir=DIR \
      --config.data.path=DATA
Export with launch/convert_to_hf.py; the result loads with trust_remote_code=True (llama_drope format).
"""

from drope_jax.run_config import sibling_config


def get_config(hf_dir: str = ""):
    c = sibling_config(__file__, "smollm_360m_drope.py").get_config(hf_dir)
    c.model.qk_norm = "proj"  # one RMSNorm over the whole q and k projections, started at 1
    return c
