"""DroPE recalibration of SmolLM-1.7B with QK-norm (official run config smollm_1_7b_drope_qk_norm): as
configs/smollm_1p7b_drope.py, plus an RMSNorm over the whole q and k projections, started at 1.

  python launch/tpu_run.py --config=configs/smollm_1p7b_drope_qk_norm.py:/models/SmolLM-1.7B --workdir=DIR \
      --config.data.path=DATA
"""

from drope_jax.run_config import default_config


def get_config(hf_dir: str = ""):
    c = default_config()
    c.model.update(vocab_size=49152, d_model=2048, num_layers=24, num_heads=32, num_kv_heads=32, mlp_dim=8192,
                   tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-5, qk_norm="proj",
                   compute_dtype="bfloat16", remat="dots_no_batch")
    c.data.update(source="arrayrecord", path="", seq_len=2048)
    c.train.update(global_batch_size=512, total_steps=120_000)
    c.optim.update(lr=3e-4, schedule="wsd", warmup_steps=600, decay_fraction=23_400 / 120_000, min_lr_ratio=0.1,
                   weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_step=0)
    c.init_from = f"hf:{hf_dir}" if hf_dir else "hf:SmolLM-1.7B"
    c.checkpoint.update(every_steps=1000, keep=3)
    c.log.every_steps = 50
    return c
