"""DroPE recalibration of Llama-2-7B: RoPE dropped at step 0, training at the original 4096-token context.

Published recipe (official run config llama2_7b_drope): global batch 512 x 4096 tokens, 5,000 steps
(~10B tokens), AdamW lr 1e-4 (the one NoPE run at a lower rate) with 100 warmup steps and a cosine decay
to 0, no weight decay, clip 1.0. Needs data in Llama-2's 32,000-token vocab:
  python launch/tpu_run.py --config=configs/llama2_7b_drope.py:/models/Llama-2-7b-hf --workdir=DIR \
      --config.data.path=DATA
On a v5p-64 slice (32 chips, FSDP over all) the full batch fits in one step, 16 sequences per chip:
44.4 of 95 GiB per chip with remat "full" (launch/aot_compile.py --topology=v5p-64, 2026-11-26).
On smaller slices raise config.train.grad_accum (launch/aot_compile.py --search_grad_accum finds it).
"""

from drope_jax.run_config import default_config


def get_config(hf_dir: str = ""):
    c = default_config()
    c.model.update(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32, mlp_dim=11008,
                   tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-5, qk_norm="none",
                   # "full": saving the matmul outputs instead ("dots_no_batch") needs 179 GiB of temporaries
                   # per chip at 16 x 4096 tokens per chip, past a v5p chip's 95 GiB (docs/performance.md)
                   compute_dtype="bfloat16", remat="full")
    c.data.update(source="arrayrecord", path="", seq_len=4096)
    c.train.update(global_batch_size=512, total_steps=5_000)
    c.optim.update(lr=1e-4, schedule="cosine", warmup_steps=100, min_lr_ratio=0.0, weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_step=0)  # NoPE from the first step: the whole run is recalibration
    c.init_from = f"hf:{hf_dir}" if hf_dir else "hf:Llama-2-7b-hf"
    c.checkpoint.update(every_steps=100, keep=3)
    c.log.every_steps = 10
    return c
