"""Round 3 of docs/reproduction.md: a 44M-parameter Llama-style model at context 1,024, with retrieval in its data.

  python launch/tpu_run.py --config=experiments/round3/config.py:ARM --workdir=DIR --config.data.path=DATA
  (DATA and the arms' order: experiments/round3/run.sh)

Every arm sees the same batches in the same order: the staged source-code corpus, with 12.5% of every
batch's rows generated retrieval documents (``config.data.retrieval_share``; keys disjoint from the
evaluation's). 2,400 steps of 64 x 1,024 tokens = 157M tokens, AdamW at 1e-3, WSD: 200 warm-up steps,
constant, linear decay to 0 over the last 300 steps.

ARM is one of
  rope              RoPE throughout (keeps its checkpoints at 1,200, 1,800 and 2,100 to branch from)
  drope_r12         DroPE tails branched from rope with 12.5%, 25% and 50% of the budget left to
  drope_r25         recalibrate: fresh AdamW moments, their own schedule (1e-3, 50 warm-up steps,
  drope_r50         linear decay to 0 over the last half), the flip before rope's decay
  drope_r25_qknorm  drope_r25 with QK-norm switched on at the flip and 3x the LR (the official QK-norm recipe)
  nope, alibi       trained from scratch with that encoding, rope's schedule
  rnope_swa         RNoPE-SWA from scratch: every 4th layer NoPE with full attention, the others RoPE over
                    the last 256 tokens
Seed 1 (``:rope@1``, ``:drope_r25@1``) changes the initialisation and the data order of both. A budget
after a slash (``:drope_r25/48``) scales every step count with it, for a smoke test of run.sh.
"""

from drope_jax.run_config import default_config

TOTAL_STEPS = 2400
RECALIBRATION = {"drope_r12": 0.125, "drope_r25": 0.25, "drope_r50": 0.5, "drope_r25_qknorm": 0.25}  # of the budget
ARMS = ("rope", *RECALIBRATION, "nope", "alibi", "rnope_swa")


def get_config(spec: str = "rope"):
    spec, _, steps = spec.partition("/")
    arm, _, seed = spec.partition("@")
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {ARMS}, as ARM[@SEED][/STEPS] "
                         "(--config=experiments/round3/config.py:ARM)")
    total = int(steps or TOTAL_STEPS)
    flips = {a: round(total * (1 - share)) for a, share in RECALIBRATION.items()}
    c = default_config()
    c.model.update(vocab_size=16384, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, mlp_dim=1536,
                   tie_embeddings=False, compute_dtype="bfloat16", scan_unroll=8)
    c.data.update(source="arrayrecord", path="", seq_len=1024, retrieval_share=0.125, retrieval_template="code",
                  shuffle_seed=int(seed or 0))
    c.train.update(global_batch_size=64, total_steps=total, seed=int(seed or 0))
    c.optim.update(lr=1e-3, schedule="wsd", warmup_steps=total // 12, decay_fraction=0.125, min_lr_ratio=0.0)
    if arm in flips:
        c.drope.update(flip_step=flips[arm], recal_warmup_steps=total // 48, recal_decay_fraction=0.5,
                       recal_min_lr_ratio=0.0)
    if arm == "drope_r25_qknorm":
        c.model.qk_norm = "proj"
        c.drope.update(qk_norm_at_flip=True, recal_lr=3e-3)
    if arm == "nope":
        c.drope.flip_step = 0
    elif arm == "alibi":
        c.positions.kind = "alibi"
    elif arm == "rnope_swa":
        c.positions.update(nope_every=4, window=256)
    branch_points = tuple(sorted(set(flips.values()))) if arm == "rope" else ()
    c.checkpoint.update(every_steps=total // 8, keep=1, keep_steps=branch_points)
    c.log.every_steps = max(total // 48, 1)
    c.eval.update(lengths=(1,), num_sequences=16, batch_size=16, every_steps=0)  # the full evaluation: run.sh
    return c
