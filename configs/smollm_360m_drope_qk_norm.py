"""DroPE recalibration of SmolLM-360M with QK-norm (official run config smollm_360m_drope_qk_norm):
as configs/smollm_360m_drope.py, plus an RMSNorm over the whole q and k projections, started at 1.

  python launch/tpu_run.py --config=configs/smollm_360m_drope_qk_norm.py:/models/SmolLM-360M --workdir=DIR \
      --config.data.path=DATA
Export with launch/convert_to_hf.py; the result loads with trust_remote_code=True (llama_drope format).
"""

from drope_jax.run_config import default_config


def get_config(hf_dir: str = ""):
    c = default_config()
    c.model.update(vocab_size=49152, d_model=960, num_layers=32, num_heads=15, num_kv_heads=5, mlp_dim=2560,
                   tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-5, qk_norm="proj",
                   compute_dtype="bfloat16", remat="dots_no_batch")
    c.data.update(source="arrayrecord", path="", seq_len=2048)
    c.train.update(global_batch_size=512, total_steps=120_000)
    c.optim.update(lr=3e-4, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_step=0)
    c.init_from = f"hf:{hf_dir}" if hf_dir else "hf:SmolLM-360M"
    c.checkpoint.update(every_steps=1000, keep=3)
    c.log.every_steps = 50
    return c
