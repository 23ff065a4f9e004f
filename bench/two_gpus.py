"""configs/0p5b_16b.py (the paper's Table 4 shape) as two processes, one per GPU, on one two-GPU machine, against
one GPU of the same machine (issue 24). Every program is started as docs/launching.md's "One process per GPU" shows.

  python bench/two_gpus.py --root=/tmp/two_gpus --out=$OUT [--deadline_s=540]   # a nvidia-h200-x2 machine
  python bench/two_gpus.py --root=/tmp/two_gpus_smoke --smoke                   # the same on CPU processes

1. throughput: launch/benchmark.py on one GPU (32 sequences of 1,024) and on two processes (64: 32 a GPU), with
   the config's FSDP mesh and with data parallelism; efficiency = tokens/s per GPU on two over one GPU's.
2. resume across process counts, through launch/tpu_run.py (the python_stdlib corpus, 32 sequences a step, the
   flip at step 20 of 30): uninterrupted on two processes and on one; stopped at step 10 on two and continued
   on one; stopped on one and continued on two. Each run's losses against the uninterrupted two-process run's.
3. evaluation: launch/evaluate.py of the uninterrupted run on one GPU and on two processes, every score compared.

Each stage leaves its result in ROOT/STAGE.json and is skipped once it has one, so a call that stops at its
deadline is continued by the same command. ROOT/summary.md (and summary.json) says what was measured; --out
gets copies of them and of every program's log.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/0p5b_16b.py"
# --smoke: a small model on CPU processes, so the whole path runs on a laptop in a few minutes
SMOKE = ["--config.model.d_model=64", "--config.model.num_layers=2", "--config.model.num_heads=2",
         "--config.model.num_kv_heads=2", "--config.model.mlp_dim=128", "--config.model.vocab_size=512",
         "--config.model.compute_dtype=float32"]
GOAL_EFFICIENCY = 0.90
LOSS_RTOL = 2 ** -8  # bf16's relative precision: "the same losses, to bf16 tolerance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(program: str, args: list[str], processes: int, log: pathlib.Path, smoke: bool, timeout_s: float,
           env_all: dict) -> int:
    """`program` as one job of `processes` processes, process i on GPU i (its log: LOG.i.log); the largest exit
    status, 124 for a job past `timeout_s`. One process that fails ends the others."""
    port, procs = free_port(), []
    for i in range(processes):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **env_all)
        if smoke:
            env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        if processes > 1:
            env.update(DROPE_COORDINATOR=f"localhost:{port}", DROPE_NUM_PROCESSES=str(processes),
                       DROPE_PROCESS_ID=str(i))
        with open(log.with_suffix(f".{i}.log"), "w") as out:
            procs.append(subprocess.Popen([sys.executable, program, *args], cwd=REPO, stdout=out,
                                          stderr=subprocess.STDOUT, env=env))
    end = time.time() + timeout_s
    while None in (codes := [p.poll() for p in procs]):
        failed = any(code not in (None, 0) for code in codes)  # its peers would wait for it until the end
        if failed or time.time() > end:
            for p in procs:
                p.kill()
            return max([p.wait() or 0 for p in procs] + [1 if failed else 124])
        time.sleep(1)
    return max(p.returncode for p in procs)


def result_line(log: pathlib.Path) -> dict:
    """The RESULT {...} line that launch/benchmark.py prints (process 0's log)."""
    found = re.findall(r"^RESULT (\{.*\})$", log.with_suffix(".0.log").read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"no RESULT line in {log.with_suffix('.0.log')}")
    return json.loads(found[-1])


def losses(workdir: pathlib.Path) -> dict[int, float]:
    """{step: loss} from a run's metrics.jsonl; a resumed run's later lines replace its earlier ones."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def loss_gap(run: dict[int, float], reference: dict[int, float]) -> dict:
    """The largest relative difference of two runs' losses over the steps both logged."""
    steps = sorted(set(run) & set(reference))
    if not steps:
        raise RuntimeError("the two runs logged no step in common")
    worst = max(steps, key=lambda s: abs(run[s] - reference[s]) / abs(reference[s]))
    rel = abs(run[worst] - reference[worst]) / abs(reference[worst])
    return {"steps": len(steps), "last_step": steps[-1], "max_rel_diff": rel, "at_step": worst,
            "within_bf16": rel <= LOSS_RTOL}


def score_gap(a: dict, b: dict) -> dict:
    """The largest differences between two launch/evaluate.py results.json: perplexity (relative), NIAH accuracy
    (absolute, per task, length and depth) and the fitted temperature's c."""
    ppl = [abs(a["ppl"][m][k] / b["ppl"][m][k] - 1) for m in a["ppl"] for k in a["ppl"][m]]
    niah = [abs(a["niah"][m][t][k][d] - b["niah"][m][t][k][d])
            for m in a["niah"] for t in a["niah"][m] for k in a["niah"][m][t] for d in a["niah"][m][t][k]]
    c = [abs(a["temperature"][m]["c"] - b["temperature"][m]["c"]) for m in a.get("temperature", {})]
    return {"ppl_max_rel_diff": max(ppl, default=0.0), "niah_max_abs_diff": max(niah, default=0.0),
            "c_max_abs_diff": max(c, default=0.0), "ppl_values": len(ppl), "niah_cells": len(niah)}


class Bench:
    def __init__(self, root: pathlib.Path, smoke: bool, deadline_s: float):
        self.root, self.smoke, self.end = root, smoke, time.time() + deadline_s
        self.overrides = SMOKE if smoke else []  # for the programs that take a config
        self.logs, self.done = root / "logs", root / "done"  # done/NAME: program NAME ended well
        self.logs.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(exist_ok=True)

    def say(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with open(self.root / "progress.log", "a") as f:
            f.write(line + "\n")

    def run(self, name: str, program: str, args: list[str], processes: int, expected_s: float) -> None:
        if (self.done / name).is_file():
            return
        left = self.end - time.time()
        if left < expected_s:
            raise TimeoutError(f"{name}: {left:.0f} s left, {expected_s:.0f} expected; run the same command again")
        self.say(f"{name}: {program} on {processes} process{'es' if processes > 1 else ''}")
        code = launch(program, args, processes, self.logs / name, self.smoke, left,
                      {"JAX_COMPILATION_CACHE_DIR": str(self.root / "jax_cache")})
        if code:
            raise RuntimeError(f"{name} exited with status {code}: see {self.logs / name}.*.log")
        (self.done / name).touch()

    def stage(self, name: str, measure) -> dict:
        path = self.root / f"{name}.json"
        if not path.is_file():
            path.write_text(json.dumps(measure(), indent=1))
        return json.loads(path.read_text())

    def throughput(self) -> dict:
        seq, per_gpu = (128, 4) if self.smoke else (1024, 32)
        common = [f"--config={CONFIG}", *self.overrides, f"--config.data.seq_len={seq}",
                  "--steps=10" if self.smoke else "--steps=15"]
        results = {}
        for name, processes, mesh in (("one_gpu", 1, []), ("two_fsdp", 2, []),
                                      ("two_data", 2, ["--config.mesh.data=-1", "--config.mesh.fsdp=1"])):
            self.run(f"bench_{name}", "launch/benchmark.py",
                     common + [f"--config.train.global_batch_size={per_gpu * processes}"] + mesh, processes, 180)
            results[name] = result_line(self.logs / f"bench_{name}")
        one = results["one_gpu"]["tokens_per_sec_per_device"]
        for name in ("two_fsdp", "two_data"):
            results[name]["efficiency"] = results[name]["tokens_per_sec_per_device"] / one
        return results

    def train(self, name: str, processes: int, stop_at: int | None = None, workdir: str | None = None) -> None:
        """30 steps of 32 sequences (8 with --smoke) of the python_stdlib corpus, the flip at step 20."""
        args = [f"--config={CONFIG}", *self.overrides, f"--workdir={self.root / (workdir or name)}",
                "--config.data.source=python_stdlib", f"--config.data.seq_len={128 if self.smoke else 1024}",
                f"--config.train.global_batch_size={8 if self.smoke else 32}",
                "--config.train.total_tokens=None", "--config.train.total_steps=30",
                "--config.drope.flip_tokens=None", "--config.drope.flip_step=20",
                "--config.optim.warmup_steps=3", "--config.drope.recal_warmup_steps=3",
                "--config.log.every_steps=1", "--config.checkpoint.every_steps=10", "--config.checkpoint.keep=1",
                "--config.eval.every_steps=0", "--config.eval.lengths=(1,)", "--config.eval.num_sequences=2"]
        if stop_at:
            args.append(f"--config.train.stop_at_step={stop_at}")
        self.run(name, "launch/tpu_run.py", args, processes, 240)

    def resume(self) -> dict:
        self.train("two", 2)
        self.train("one", 1)
        self.train("two_then_one.a", 2, stop_at=10, workdir="two_then_one")
        self.train("two_then_one.b", 1, workdir="two_then_one")
        self.train("one_then_two.a", 1, stop_at=10, workdir="one_then_two")
        self.train("one_then_two.b", 2, workdir="one_then_two")
        reference = losses(self.root / "two")
        return {run: loss_gap(losses(self.root / run), reference) for run in ("one", "two_then_one", "one_then_two")}

    def evaluate(self) -> dict:
        args = [f"--workdir={self.root / 'two'}", "--methods=drope,drope_raw", "--lengths=1,2", "--tasks=ppl,niah",
                "--niah_samples=4", "--ppl_sequences=4", "--temperature_sequences=2", "--batch_size=2"]
        for name, processes in (("eval_one", 1), ("eval_two", 2)):
            self.run(name, "launch/evaluate.py", args + [f"--out={self.root / name}"], processes, 240)
        one, two = (json.loads((self.root / n / "results.json").read_text()) for n in ("eval_one", "eval_two"))
        return score_gap(two, one)


def summary(results: dict) -> str:
    lines = ["| run | tokens/s per GPU | step | MFU | efficiency |", "|---|---:|---:|---:|---:|"]
    for name, r in results.get("throughput", {}).items():
        eff = f"{r['efficiency']:.1%}" if "efficiency" in r else "1 GPU"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"| {name} ({r['mesh']}) | {r['tokens_per_sec_per_device']:,.0f} | "
                     f"{r['step_time_s'] * 1e3:.1f} ms | {mfu} | {eff} |")
    for name, g in results.get("resume", {}).items():
        lines.append(f"\n{name} against the uninterrupted two-process run: {g['steps']} steps, largest relative loss "
                     f"difference {g['max_rel_diff']:.2e} at step {g['at_step']} "
                     f"({'within' if g['within_bf16'] else 'OUTSIDE'} bf16's {LOSS_RTOL:.2e})")
    if "evaluate" in results:
        e = results["evaluate"]
        lines.append(f"\nlaunch/evaluate.py on two processes against one GPU: perplexity {e['ppl_max_rel_diff']:.2e} "
                     f"(relative, {e['ppl_values']} values), NIAH {e['niah_max_abs_diff']:.3f} (absolute, "
                     f"{e['niah_cells']} cells), c {e['c_max_abs_diff']:.3f}")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="working folder; kept between calls on a warm machine")
    p.add_argument("--out", default="", help="where summary.md, summary.json and the logs are copied")
    p.add_argument("--deadline_s", type=float, default=1e9, help="start no program that would not end in time")
    p.add_argument("--smoke", action="store_true", help="CPU processes and a small model")
    args = p.parse_args()
    bench = Bench(pathlib.Path(args.root), args.smoke, args.deadline_s)
    results, failure = {}, None
    for name in ("throughput", "resume", "evaluate"):
        try:
            results[name] = bench.stage(name, getattr(bench, name))
        except (RuntimeError, TimeoutError) as e:
            failure = f"{name}: {e}"
            bench.say(f"stopped at {failure}")
            break
    text = summary(results)
    (bench.root / "summary.md").write_text(text)
    (bench.root / "summary.json").write_text(json.dumps(results, indent=1))
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for f in ("summary.md", "summary.json", "progress.log"):
            shutil.copy(bench.root / f, out / f)
        shutil.make_archive(str(out / "logs"), "gztar", bench.logs)
    sys.exit(1 if failure else 0)


if __name__ == "__main__":
    main()
