"""This project's own recipe for the from-scratch experiment (configs/0p5b_16b.py until 2026-12-04; the
paper's Table 4 is now configs/0p5b_16b.py): a 0.5B Llama-style model, 16B tokens, NoPE after 14B, under a
warm-up-stable-decay schedule so that the flip comes before any decay. Not the paper's shape or optimizer:
24 layers, d 1024, 16 heads (no GQA), SwiGLU 4096, untied 49,152-token vocab (503M parameters), RoPE theta
10,000, AdamW (0.9, 0.999) without weight decay.
Context 1024 tokens; global batch 512 sequences = 524,288 tokens per step; so 30,517 steps with the
flip at step 26,702. Needs pre-tokenized data (49,152-token vocab):
  python launch/tpu_run.py --config=configs/0p5b_16b_wsd.py --workdir=gs://... --config.data.path=DIR
The whole batch fits one step on a v5p-8 (90.7 of 95 GiB per chip). Chips with less HBM keep the
batch and accumulate: --config.train.grad_accum=4 on a v4-8 or v6e-8, 16 on a v5e-8 (found with
launch/aot_compile.py --search_grad_accum; docs/performance.md).

The learning rate. The paper states the 14B + 2B split; its recalibration schedule is not in the
official code, whose recalibrations (of released, annealed checkpoints) each start a fresh AdamW
with a schedule of their own, mostly at peak LR (3e-4; docs/flip.md). So here:
- pretraining is warm-up-stable-decay at 3e-4 whose decay covers the last 2B tokens: up to the flip
  the LR is at its peak, as in the RoPE run of the same budget, which anneals over those 2B tokens;
- at the flip, fresh AdamW moments and the recalibration's own schedule: 100 warm-up steps, 3e-4,
  then a linear decay over the last 20% of the 2B tokens to 3e-5 (the defaults of config.drope).
What we measured (docs/flip.md, 2026-12-01): a flip inside a cosine decay (this config until then)
recalibrated at ~13% of the peak LR; at 44M parameters on one H200, this recipe with a third of the
budget left for recalibration ends 1.22x the annealed RoPE run's in-context perplexity (1.16x with
half), while beating it at 2x and 4x. config.drope.rope_control=True trains that RoPE run too.
"""

from drope_jax.run_config import default_config


def get_config():
    c = default_config()
    c.model.update(vocab_size=49152, d_model=1024, num_layers=24, num_heads=16, num_kv_heads=16, mlp_dim=4096,
                   tie_embeddings=False, rope_theta=10000.0, compute_dtype="bfloat16", remat="dots_no_batch",
                   scan_unroll=24)  # fully unrolled: 1.13x faster steps on an H200 (docs/performance.md)
    c.data.update(source="arrayrecord", path="", seq_len=1024)
    c.train.update(global_batch_size=512, total_tokens=16_000_000_000)
    c.optim.update(lr=3e-4, schedule="wsd", warmup_steps=1000, decay_fraction=0.125, min_lr_ratio=0.1,
                   weight_decay=0.0, grad_clip=1.0)
    c.drope.update(flip_tokens=14_000_000_000, reset_opt_state=True, recal_lr=3e-4, recal_warmup_steps=100,
                   recal_decay_fraction=0.2, recal_min_lr_ratio=0.1)
    c.checkpoint.update(every_steps=1000, keep=3)
    c.log.every_steps = 50
    return c
