"""DroPE recalibration of SmolLM-1.7B: RoPE dropped at step 0, training at the original 2048-token context.

Published recipe (official run config smollm_1_7b_drope): global batch 512 x 2048 tokens, 120,000 steps
(~126B tokens), AdamW lr 3e-4, warmup-stable-decay: 600 warmup steps, 23,400 decay steps (19.5%) to 10% of
the peak, no weight decay, clip 1.0. Our WSD decays linearly; the official one follows a half cosine.
  python launch/tpu_run.py --config=configs/smollm_1p7b_drope.py:/models/SmolLM-1.7B --workdir=DIR \
      --config.data.path=DATA
"""

from drope_jax.run_config import default_config


def get_config(hf_dir: str = ""):
    c = default_config()
    c.model.update(vocab_size=49152, d_model=2048, num_layers=24, num_heads=32, num_kv_heads=32, mlp_dim=8192,
                   tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-5, qk_norm="none",
                   compute_dtype="bfloat16", remat="dots_no_batch")
    c.data.update(source="arrayrecord", path="", seq_len=2048)
    c.train.update(global_batch_size=512, total_steps=120_000)
    c.optim.update(lr=3e-4, schedule="wsd", warmup_steps=600, decay_fraction=23_400 / 120_000, min_lr_ratio=0.1,
                   weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_step=0)  # NoPE from the first step: the whole run is recalibration
    c.init_from = f"hf:{hf_dir}" if hf_dir else "hf:SmolLM-1.7B"
    c.checkpoint.update(every_steps=1000, keep=3)
    c.log.every_steps = 50
    return c
