"""The DroPE paper's from-scratch experiment, Table 4's left column (arXiv 2512.12167, appendix C.1).

Model: Qwen2-0.5B's shape, 494M parameters (358M without the embedding): 24 layers, d 896, SwiGLU 4864,
14 heads and 2 KV heads of dimension 64, no attention bias, RoPE theta 1,000,000, tied embeddings, init
std 0.02, bf16, Qwen2's vocabulary (151,936). No QK-norm in this experiment. Needs data tokenized with
Qwen2's tokenizer (launch/prepare_data.py --tokenizer=DIR_OF_QWEN2):
  python launch/tpu_run.py --config=configs/0p5b_16b.py --workdir=gs://... --config.data.path=DIR

Budget, in the paper's tokens: context 1024 x 1024 sequences = 1,048,576 tokens a step. "16.8B tokens
(about 16K steps)" and "2.10B tokens (about 2K steps)" of recalibration from "the 14K-step checkpoint" agree
only as 16,000 steps with the flip at step 14,000, so total_tokens is 16,000 steps' worth (16,777,216,000)
and flip_tokens 14,000 steps' (14,680,064,000); the recalibration is the last 2,000 steps (2,097,152,000
tokens). drope_jax.run_config.make_plan derives exactly these steps (tests/test_configs.py checks them).

Optimizer (the paper): AdamW (0.9, 0.95), eps 1e-8, weight decay 0.1, gradient clipping 1.0.
Pretraining: peak 3e-4 after 520 linear warm-up steps, then a cosine over the 16,000 steps. The paper says
"cosine" and no floor; we decay to 0 (optim.min_lr_ratio=0), as transformers' cosine schedule does.
Recalibration (the paper): a schedule of its own, peak 1e-3 after 70 warm-up steps, cosine decay; we end it
at 0 too (drope.recal_min_lr_ratio=0) and restart the AdamW moments at the flip (drope.reset_opt_state; the
paper does not say; every official recalibration is a fresh optimizer on the pretrained weights).
So the flip lands inside the pretraining decay, accepted explicitly (drope.flip_in_decay=True): at step
14,000 of a 16,000-step cosine the pretraining LR has fallen to 1.2e-5, and the recalibration re-warms
from there to 1e-3, 3.3x above the pretraining peak. configs/0p5b_16b_wsd.py keeps this project's WSD
recipe, which flips at the pretraining peak, and the measurements behind it.

TPU fit of the whole 1024-sequence batch, FSDP over every chip (launch/aot_compile.py --search_grad_accum,
2026-12-04, compiled on the 2-core CPU machine against libtpu's topology; docs/performance.md). No 4- or
8-chip slice takes it in one step; keep the batch and accumulate, --config.train.grad_accum=N:
  v5p-8 (4 chips):  4, 94.4 of 95 GiB per chip (the NoPE phase's step 91.2; with 8: 58.9)
  v4-8 (4 chips):  16, 29.5 of 32 GiB
  v6e-8 (8 chips): 16, 20.2 of 32 GiB (with 8: 38.3, does not fit)
  v5e-8 (8 chips): 32, 13.4 of 16 GiB
  v5p-64 (32 chips): 1 (the default), 73.8 of 95 GiB
With half that grad_accum, XLA refuses to compile the step (or, v6e-8, it needs more than the HBM).

The RoPE run the paper compares with ("RoPE throughout", Table 6) trains the same 16,000-step cosine to the
end: --config.drope.rope_control=True trains it first, in WORKDIR/rope_control, and branches this run from
its checkpoint at step 14,000 (the two see the same batches at the same LR up to the flip).
"""

from drope_jax.run_config import default_config


def get_config():
    c = default_config()
    c.model.update(vocab_size=151_936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                   mlp_dim=4864, attention_bias=False, qk_norm="none", tie_embeddings=True, rope_theta=1_000_000.0,
                   init_std=0.02, compute_dtype="bfloat16", remat="dots_no_batch",
                   scan_unroll=24)  # fully unrolled: 212 against 235 ms a step on an H200 (docs/performance.md)
    c.data.update(source="arrayrecord", path="", seq_len=1024)
    c.train.update(global_batch_size=1024, total_tokens=16_777_216_000)  # 16,000 steps of 1,048,576 tokens
    c.optim.update(lr=3e-4, schedule="cosine", warmup_steps=520, min_lr_ratio=0.0,
                   b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    c.drope.update(flip_tokens=14_680_064_000, flip_in_decay=True, reset_opt_state=True,  # the flip at step 14,000
                   recal_schedule="cosine", recal_lr=1e-3, recal_warmup_steps=70, recal_min_lr_ratio=0.0)
    c.checkpoint.update(every_steps=1000, keep=3)
    c.log.every_steps = 50
    return c
