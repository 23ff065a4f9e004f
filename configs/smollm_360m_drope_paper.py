"""DroPE recalibration of SmolLM-360M with the paper's recipe (Table 4, right column; arXiv 2512.12167,
appendix C.1), where configs/smollm_360m_drope.py follows the official code's run config. What the paper
states and this config changes:
- AdamW (0.9, 0.95) and weight decay 0.1 (the official code: (0.9, 0.999), no weight decay);
- peak LR 1e-3 after 490 linear warm-up steps, then a cosine decay (the official code: 3e-4 constant); the
  paper gives no floor: we decay to 0, as configs/0p5b_16b.py does;
- QK-norm on, the official code's RMSNorm over the whole q and k projections (configs/smollm_360m_drope_qk_norm.py);
  at 1e-3 the paper's Table 11 finds the run unstable without it;
- budgets of 30B, 60B and 120B tokens; 120B here (114,440 steps of 512 x 2048 tokens), the others with
  --config.train.total_tokens=30_000_000_000 or 60_000_000_000.
Batch 512 x 2048, clipping 1.0 and eps 1e-8 are the same in both.
  python launch/tpu_run.py --config=configs/smollm_360m_drope_paper.py:/models/SmolLM-360M --workdir=DIR \
      --config.data.path=DATA
"""

from drope_jax.run_config import sibling_config


def get_config(hf_dir: str = ""):
    c = sibling_config(__file__, "smollm_360m_drope_qk_norm.py").get_config(hf_dir)
    c.train.update(total_steps=None, total_tokens=120_000_000_000)
    c.optim.update(lr=1e-3, schedule="cosine", warmup_steps=490, min_lr_ratio=0.0, b1=0.9, b2=0.95, weight_decay=0.1)
    return c
