"""DroPE recalibration of Llama-2-7B with QK-norm (official run config llama2_7b_drope_qk_norm): global
batch 512 x 4096 tokens, 15,000 steps (~30B tokens), AdamW lr 3e-4 (QK-norm tolerates the higher rate) with
100 warmup steps and a cosine decay to 0, no weight decay, clip 1.0.

  python launch/tpu_run.py --config=configs/llama2_7b_drope_qk_norm.py:/models/Llama-2-7b-hf --workdir=DIR \
      --config.data.path=DATA
"""

from drope_jax.run_config import sibling_config


def get_config(hf_dir: str = ""):
    c = sibling_config(__file__, "llama2_7b_drope.py").get_config(hf_dir)
    c.model.qk_norm = "proj"  # one RMSNorm over the whole q and k projections, started at 1
    # the official QK-norm run trains longer at the higher LR
    c.train.total_steps = 15_000
    c.optim.lr = 3e-4
    c.checkpoint.every_steps = 500
    return c
