"""The science runs of docs/reproduction.md: one 44M-parameter Llama-style model, four arms.

  python launch/tpu_run.py --config=experiments/drope_small/config.py:ARM --workdir=DIR \
      --config.data.path=DATA   # DATA: written by experiments/drope_small/run.sh

ARM is one of
  rope          RoPE throughout
  nope          NoPE from scratch
  drope         RoPE, then NoPE for the last 12.5% of the steps (the paper's 14B/16B split)
  drope_qknorm  as drope, with QK-norm (over the whole q and k projections) switched on at the flip

Every arm sees the same batches in the same order (same seed) under the same learning-rate schedule:
warm-up, constant, and a linear decay over the last 10% of the steps (WSD), so the recalibration after
the flip starts at the peak learning rate (re-warmed over 80 steps) and ends with the decay, as the
RoPE arm's last steps do. Context 512 tokens, 128 sequences (65,536 tokens) a step, 3,200 steps:
210M tokens per arm.
"""

from drope_jax.run_config import default_config

ARMS = ("rope", "nope", "drope", "drope_qknorm")
TOTAL_STEPS = 3200
FLIP_STEP = 2800  # 87.5%: the paper's 14B of 16B


def get_config(arm: str = "drope"):
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {ARMS} (--config=experiments/drope_small/config.py:ARM)")
    c = default_config()
    c.model.update(vocab_size=16384, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, mlp_dim=1536,
                   tie_embeddings=False, compute_dtype="bfloat16", scan_unroll=8)
    c.data.update(source="arrayrecord", path="", seq_len=512)
    c.train.update(global_batch_size=128, total_steps=TOTAL_STEPS)
    c.optim.update(lr=1e-3, schedule="wsd", warmup_steps=200, decay_fraction=0.1, min_lr_ratio=0.0)
    if arm == "nope":
        c.drope.flip_step = 0
    elif arm.startswith("drope"):
        c.drope.update(flip_step=FLIP_STEP, recal_warmup_steps=80, recal_decay_fraction=0.8,  # rounds 1-2 as run:
                       flip_in_decay=True, reset_opt_state=False)  # 80 re-warm steps, the last 320 decaying
    if arm == "drope_qknorm":
        c.model.qk_norm = "proj"
        c.drope.qk_norm_at_flip = True
    c.checkpoint.update(every_steps=400, keep=2)
    c.log.every_steps = 20
    c.eval.update(lengths=(1, 2, 4, 8), num_sequences=16, batch_size=16, every_steps=200)
    return c
