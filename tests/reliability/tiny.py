"""The run the reliability tests interrupt: configs/tiny.py (the quickstart) shrunk to seconds on a CPU.

Loaded both in-process (``get_config()``) and by ``launch/tpu_run.py --config=<this file>``.
"""

import pathlib

from drope_jax.run_config import load_module

QUICKSTART = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny.py"


def get_config():
    c = load_module(QUICKSTART).get_config()
    c.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=64)
    c.data.update(seq_len=32)
    c.train.update(global_batch_size=8, total_steps=12)
    c.optim.update(warmup_steps=2)
    c.drope.update(flip_step=8, recal_warmup_steps=2, rope_control=False)
    c.checkpoint.update(every_steps=2, keep=2)
    c.log.every_steps = 1
    c.eval.update(lengths=(1,), num_sequences=2, batch_size=2)
    return c
