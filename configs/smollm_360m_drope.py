"""DroPE recalibration of SmolLM-360M (the paper's "in the wild" setting): RoPE is dropped at step 0 and
the pretrained model trains without it at its original 2048-token context.

The official code's recipe (its run config smollm_360m_drope): global batch 512 x 2048 tokens, 120,000 steps
(~126B tokens), AdamW (0.9, 0.999) at lr 3e-4 held constant (its HF `constant` scheduler has no warmup), no
weight decay, clip 1.0, no QK-norm. The paper's Table 4 (right column) states another: lr 1e-3 after 490
warm-up steps with a cosine decay, AdamW (0.9, 0.95), weight decay 0.1, QK-norm on, 30B/60B/120B tokens;
that one is configs/smollm_360m_drope_paper.py. Needs pre-tokenized data in SmolLM's 49,152-token vocab and
the checkpoint on local disk:
  python launch/tpu_run.py --config=configs/smollm_360m_drope.py:/models/SmolLM-360M --workdir=DIR \
      --config.data.path=DATA
The path after ':' is the Hugging Face directory; the model fields below must match its config.json
(checked, key by key, before training).
"""

from drope_jax.run_config import default_config


def get_config(hf_dir: str = ""):
    c = default_config()
    c.model.update(vocab_size=49152, d_model=960, num_layers=32, num_heads=15, num_kv_heads=5, mlp_dim=2560,
                   tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-5, qk_norm="none",
                   compute_dtype="bfloat16", remat="dots_no_batch")
    c.data.update(source="arrayrecord", path="", seq_len=2048)
    c.train.update(global_batch_size=512, total_steps=120_000)
    c.optim.update(lr=3e-4, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_step=0)  # NoPE from the first step: the whole run is recalibration
    c.init_from = f"hf:{hf_dir}" if hf_dir else "hf:SmolLM-360M"
    c.checkpoint.update(every_steps=1000, keep=3)
    c.log.every_steps = 50
    return c
