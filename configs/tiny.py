"""The embedded default: a 4-layer byte-level model on the Python standard library's own source.

Nothing is downloaded. The run trains its RoPE control first (200 steps, annealed over the last 20%),
then the DroPE run branches from the control's checkpoint at step 100 (50%) and recalibrates for 100
steps with fresh AdamW moments and a schedule of its own (10 warm-up steps, constant, decay over the
last 20%). Both see the same batches, so the printed table compares RoPE and DroPE at the same budget.
About 5 minutes on a 2-core CPU; it prints held-out perplexity at 1x, 2x, 4x and 8x the 128-token
context. At this size DroPE wins only far past the context: docs/flip.md has the sweeps.
"""

from drope_jax.run_config import default_config


def get_config():
    c = default_config()
    c.model.update(vocab_size=257, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=512,
                   compute_dtype="float32")
    c.data.update(source="python_stdlib", seq_len=128)
    c.train.update(global_batch_size=32, total_steps=200)
    c.optim.update(lr=1e-3, schedule="wsd", warmup_steps=30, decay_fraction=0.2, min_lr_ratio=0.0)
    c.drope.update(flip_step=100, rope_control=True, recal_warmup_steps=10, recal_decay_fraction=0.2)
    c.checkpoint.update(every_steps=100, keep=2)
    c.log.every_steps = 20
    c.eval.update(lengths=(1, 2, 4, 8), num_sequences=16)
    return c
