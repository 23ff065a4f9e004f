"""Tunes the quickstart (configs/tiny.py) on a GPU: many small runs at once, one table at the end.

  python experiments/quickstart/sweep.py --data=DIR --out=DIR [--parallel=8] [--only=NAME,...] [--variants=JSON]

DIR is the byte-level stdlib corpus the quickstart prepares (~/.cache/drope_jax/python3.11_stdlib_*),
so the runs read the same text as the 2-core machine. Every variant is configs/tiny.py plus the flags
below (or those of an earlier sweep's JSON, docs/flip/quickstart_sweeps/); each trains with its RoPE
control (config.drope.rope_control) and prints the final table.
The GPU runs in float32 like the CPU, so the numbers track the quickstart's but are not identical to them.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

EVAL = ["--config.eval.lengths=(1,2,4,8)", "--config.eval.every_steps=0"]
QK = ["--config.model.qk_norm=proj", "--config.drope.qk_norm_at_flip=True"]


def split(total, flip, lr=None, warmup=10, decay=0.2, extra=()):
    flags = [f"--config.train.total_steps={total}", f"--config.drope.flip_step={flip}",
             f"--config.drope.recal_warmup_steps={warmup}", f"--config.drope.recal_decay_fraction={decay}",
             "--config.drope.rope_control=True", "--config.optim.decay_fraction=0.2"]
    if lr is not None:
        flags.append(f"--config.drope.recal_lr={lr}")
    return flags + list(extra)


def scratch(total, flip, extra=()):
    """A run without a control: NoPE from scratch (flip 0) or RoPE throughout (flip None)."""
    return [f"--config.train.total_steps={total}", f"--config.drope.flip_step={flip}",
            "--config.optim.decay_fraction=0.2", *extra]


L8 = ["--config.model.num_layers=8"]
S64 = ["--config.data.seq_len=64", "--config.train.global_batch_size=64"]
S256 = ["--config.data.seq_len=256", "--config.train.global_batch_size=16"]
VARIANTS = {  # the third sweep of 2026-12-01; all three are in docs/flip/quickstart_sweeps/
    "s64_t300_f150": split(300, 150, extra=S64),
    "s64_t300_f200": split(300, 200, extra=S64),
    "nope_s64_t300": scratch(300, 0, S64),
    "s64_t400_f200": split(400, 200, extra=S64),
    "s256_t300_f150": split(300, 150, extra=S256),
    "t300_f200": split(300, 200),
    "t250_f150": split(250, 150),
    "lr2e-3_t300_f150": split(300, 150, extra=["--config.optim.lr=2e-3"]),
    "t300_f150_L6_d96": split(300, 150, extra=["--config.model.num_layers=6", "--config.model.d_model=96",
                                               "--config.model.mlp_dim=384", "--config.model.num_heads=3",
                                               "--config.model.num_kv_heads=3"]),
    "t300_f200_L8": split(300, 200, extra=L8),
    "t300_f150_warm30": split(300, 150, warmup=30),
    "t300_f150_decay0": split(300, 150, decay=0.0),
}


def train(name, flags, data, out):
    workdir = out / name
    cmd = [sys.executable, "launch/tpu_run.py", "--config=configs/tiny.py", f"--workdir={workdir}",
           "--config.data.source=arrayrecord", f"--config.data.path={data}", *EVAL, *flags]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    start = time.time()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    result = json.loads((workdir / "eval.json").read_text()) if rc == 0 else {}
    return name, rc, time.time() - start, result


def qk_gains(workdir: pathlib.Path) -> dict:
    """Per layer, the mean and largest |gain| of the QK-norm weights of the final model."""
    import numpy as np
    import orbax.checkpoint as ocp
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    state = ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))
    attn = state["params"]["blocks"]["attn"]
    return {name: {"mean_abs": np.abs(np.asarray(attn[name]["weight"])).mean(axis=-1).round(3).tolist(),
                   "max_abs": np.abs(np.asarray(attn[name]["weight"])).max(axis=-1).round(3).tolist()}
            for name in ("q_norm", "k_norm")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--only", default="")
    p.add_argument("--variants", default="", help="rerun the variants of an earlier sweep.json")
    a = p.parse_args()
    if a.variants:
        VARIANTS.clear()
        VARIANTS.update({n: r["flags"] for n, r in json.loads(pathlib.Path(a.variants).read_text()).items()})
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = a.only.split(",") if a.only else list(VARIANTS)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(a.parallel) as pool:
        for name, rc, secs, result in pool.map(lambda n: train(n, VARIANTS[n], a.data, out), names):
            results[name] = {"rc": rc, "seconds": secs, "flags": VARIANTS[name], **result}
            if rc == 0 and "qk" in name:
                results[name]["qk_gains"] = qk_gains(out / name)
            print(f"{name}: rc {rc}, {secs:.0f} s", flush=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    for name in names:
        r = results[name]
        print(f"\n== {name} ({' '.join(f.removeprefix('--config.') for f in VARIANTS[name])})")
        for model, ppl in r.get("perplexity", {}).items():
            print(f"  {model:<34}" + "".join(f"{ppl[k]:>10.3f}" for k in sorted(ppl, key=int)))
        if "qk_gains" in r:
            print(f"  QK-norm gains: {r['qk_gains']}")


if __name__ == "__main__":
    main()
