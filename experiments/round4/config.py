"""Round 4 of docs/reproduction.md: the DroPE paper's from-scratch recipe (Table 4), scaled down to round 3's
44M-parameter model, at three budgets in tokens per parameter.

  python launch/tpu_run.py --config=experiments/round4/config.py:ARM,budget=B[,ratio=R][,steps=N] \
      --workdir=DIR --config.data.path=DATA        (DATA and the order of the arms: experiments/round4/run.sh)

The model, context (1,024), batch (64 sequences, 65,536 tokens a step) and data mix (12.5% of every batch's
rows generated retrieval documents, keys disjoint from the evaluation's) are round 3's. The recipe is Table 4's:
AdamW (0.9, 0.95), eps 1e-8, weight decay 0.1 (matrices only), clip 1.0; pretraining peak 1e-3 (round 3's,
for this size) after a warm-up of 3.25% of the steps (the paper's 520 of 16,000), then a cosine to 0.

ARM is one of
  rope        RoPE throughout, the whole cosine; keeps its checkpoints at the tails' flips to branch from
  drope_r12   DroPE tails branched from rope with 12.5% (the paper's 2.1B of 16.8B tokens) and 25% of the
  drope_r25   budget left, inside rope's cosine: NoPE in every layer, fresh AdamW moments (the paper does not
              say; every official recalibration is a fresh optimizer), a schedule of their own: a warm-up of
              3.5% of the tail (the paper's 70 of 2,000 steps) to RATIO x the pretraining peak (the paper:
              1e-3 against 3e-4, 3.3x), then a cosine to 0
  nope, alibi, rnope_swa   from scratch with rope's schedule (RNoPE-SWA: every 4th layer NoPE with full
              attention, the others RoPE over the last 256 tokens)

budget is one of BUDGETS (tokens per parameter, of the 44,048,896 parameters, embeddings included, as round 3
counted them); ratio (tails only) one of the registered sweep's RATIOS or another number; steps=N scales every
step count to a budget of N steps, for a smoke test of run.sh.
"""

from drope_jax.run_config import default_config

PARAMETERS = 44_048_896
TOKENS_PER_STEP = 64 * 1024
# tokens per parameter -> steps: round 3's budget, about 14, and the largest one H200 holds in one session
# (24; 34, the paper's, needs about 23 minutes of training alone: docs/reproduction.md, round 4)
BUDGETS = {"3.6": 2400, "14": 9600, "24": 16128, "34": 22848}
PEAK_LR = 1e-3
RATIOS = (1.0, 2.0, 3.3)  # the tail's peak over the pretraining peak: the registered sweep, 12.5% tail, budget 14
TAILS = {"drope_r12": 0.125, "drope_r25": 0.25}  # of the budget, recalibrating
ARMS = ("rope", *TAILS, "nope", "alibi", "rnope_swa")


def parse(spec: str) -> dict:
    """"drope_r12,budget=14,ratio=2" -> {"arm": "drope_r12", "budget": "14", "ratio": "2"}."""
    arm, *pairs = spec.split(",")
    fields = dict(pair.split("=", 1) for pair in pairs)
    unknown = set(fields) - {"budget", "ratio", "steps"}
    if arm not in ARMS or unknown or fields.get("budget", "14") not in BUDGETS:
        raise ValueError(f"{spec!r}: give ARM[,budget=B][,ratio=R][,steps=N] with ARM one of {ARMS}, B one of "
                         f"{tuple(BUDGETS)} (--config=experiments/round4/config.py:drope_r12,budget=14,ratio=2)")
    if (arm in TAILS) != ("ratio" in fields):
        raise ValueError(f"{spec!r}: the tails ({', '.join(TAILS)}), and only they, take ratio=R (their peak LR "
                         "over the pretraining peak)")
    return {"arm": arm, "budget": fields.get("budget", "14"), "ratio": float(fields.get("ratio", 0)),
            "steps": int(fields.get("steps", 0))}


def flip_steps(total: int) -> dict:
    return {arm: round(total * (1 - share)) for arm, share in TAILS.items()}


def get_config(spec: str = "rope,budget=14"):
    s = parse(spec)
    arm, total = s["arm"], s["steps"] or BUDGETS[s["budget"]]
    flips = flip_steps(total)
    c = default_config()
    c.model.update(vocab_size=16384, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, mlp_dim=1536,
                   tie_embeddings=False, compute_dtype="bfloat16", scan_unroll=8)
    c.data.update(source="arrayrecord", path="", seq_len=1024, retrieval_share=0.125, retrieval_template="code")
    c.train.update(global_batch_size=64, total_steps=total)
    c.optim.update(lr=PEAK_LR, schedule="cosine", warmup_steps=max(round(total * 0.0325), 1), min_lr_ratio=0.0,
                   b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    if arm in TAILS:
        c.drope.update(flip_step=flips[arm], flip_in_decay=True, reset_opt_state=True, recal_schedule="cosine",
                       recal_lr=s["ratio"] * PEAK_LR, recal_warmup_steps=max(round((total - flips[arm]) * 0.035), 1),
                       recal_min_lr_ratio=0.0)
    elif arm == "nope":
        c.drope.flip_step = 0
    elif arm == "alibi":
        c.positions.kind = "alibi"
    elif arm == "rnope_swa":
        c.positions.update(nope_every=4, window=256)
    c.checkpoint.update(every_steps=max(total // 16, 1), keep=1,
                        keep_steps=tuple(sorted(flips.values())) if arm == "rope" else ())
    c.log.every_steps = max(total // 96, 1)
    c.eval.update(lengths=(1,), num_sequences=16, batch_size=16, every_steps=0)  # the full evaluation: run.sh
    return c
