"""DroPE recalibration of Llama-2-7B with QK-norm (official run config llama2_7b_drope_qk_norm): global
batch 512 x 4096 tokens, 15,000 steps (~30B tokens), AdamW lr 3e-4 (QK-norm tolerates the higher rate) with
100 warmup steps and a cosine decay to 0, no weight decay, clip 1.0.

  python launch/tpu_run.py --config=configs/llama2_7b_drope_qk_norm.py:/models/Llama-2-7b-hf --workdir=DIR \
      --config.data.path=DATA
"""

from drope_jax.run_config import default_config


def get_config(hf_dir: str = ""):
    c = default_config()
    c.model.update(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32, mlp_dim=11008,
                   tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-5, qk_norm="proj",
                   compute_dtype="bfloat16", remat="full")
    c.data.update(source="arrayrecord", path="", seq_len=4096)
    c.train.update(global_batch_size=512, total_steps=15_000)
    c.optim.update(lr=3e-4, schedule="cosine", warmup_steps=100, min_lr_ratio=0.0, weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_step=0)
    c.init_from = f"hf:{hf_dir}" if hf_dir else "hf:Llama-2-7b-hf"
    c.checkpoint.update(every_steps=500, keep=3)
    c.log.every_steps = 10
    return c
