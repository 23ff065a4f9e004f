"""Round 3's gate and readings, from the evaluations that experiments/round3/run.sh writes.

  python experiments/round3/report.py --gate=GATE/results.json      # exit 0 when the gate passes
  python experiments/round3/report.py --root=ROOT --out=DIR         # DIR/report.md, summary.json, plots

The readings are the ones registered in docs/reproduction.md before the runs; DroPE there is drope_r25
(25% of the budget recalibrating), seed 0, with seed 1 beside it. NIAH accuracy is pooled over the four
tasks and five depths (960 prompts per method and length) with a 95% Wilson interval; "beats X beyond the
intervals" means DroPE's lower bound lies above X's upper bound.
"""

import argparse
import json
import pathlib
import sys

from drope_jax.data import niah

GATE = 0.8  # single-key and multikey at 1x, each
GATE_TASKS = ("passkey", "multikey")
# (evaluation folder, method in it) -> the name in the report
ARMS = {("rope", "rope"): "RoPE", ("rope", "pi"): "PI", ("rope", "ntk"): "NTK", ("rope", "yarn"): "YaRN",
        ("drope_r12", "drope"): "DroPE 12.5%", ("drope_r25", "drope"): "DroPE 25%",
        ("drope_r50", "drope"): "DroPE 50%", ("drope_r25_qknorm", "drope"): "DroPE 25% + QK-norm",
        ("nope", "nope"): "NoPE", ("alibi", "alibi"): "ALiBi", ("rnope_swa", "rnope_swa"): "RNoPE-SWA",
        ("rope_s1", "rope"): "RoPE (seed 1)", ("drope_r25_s1", "drope"): "DroPE 25% (seed 1)"}
DROPE, SEED1 = "DroPE 25%", "DroPE 25% (seed 1)"


def pooled(results: dict, method: str, length: str, tasks=None) -> tuple[float, int]:
    """Hits and prompts of ``method`` at ``length``, over ``tasks`` (default: all) and every depth."""
    n_cell = results["settings"]["niah_samples"]
    by_task = results["niah"][method]
    hits = sum(round(acc * n_cell) for task, lengths in by_task.items() if tasks is None or task in tasks
               for acc in lengths[length].values())
    cells = sum(len(lengths[length]) for task, lengths in by_task.items() if tasks is None or task in tasks)
    return hits, cells * n_cell


def gate(path: str, threshold: float = GATE) -> bool:
    results = json.loads(pathlib.Path(path).read_text())
    method = next(iter(results["niah"]))
    verdicts = []
    for task in GATE_TASKS:
        hits, n = pooled(results, method, "1", (task,))
        lo, hi = niah.wilson_interval(hits, n)
        verdicts.append(hits / n >= threshold)
        print(f"gate: {task} at 1x {hits}/{n} = {hits / n:.3f} [{lo:.3f}, {hi:.3f}] (needs {threshold})")
    print("gate passed" if all(verdicts) else "gate failed")
    return all(verdicts)


def load(root: pathlib.Path) -> tuple[dict, dict]:
    """{report name: {"ppl": {length: ppl}, "niah": {length: (hits, n)}, "tasks": {task: {length: (hits, n)}}}}"""
    table, settings = {}, {}
    for (folder, method), name in ARMS.items():
        path = root / "eval" / folder / "results.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        if method not in r["ppl"]:
            continue
        settings = {"lengths": r["lengths"], "niah_samples": r["settings"]["niah_samples"],
                    "depths": r["settings"]["depths"], "template": r["settings"]["template"],
                    "ppl_documents": next(iter(next(iter(r["loss_by_position"].values())).values()))["documents"],
                    "device": r["device"], "date": r["date"]}
        lengths = list(r["ppl"][method])
        table[name] = {"ppl": r["ppl"][method],
                       "niah": {m: pooled(r, method, m) for m in lengths},
                       "tasks": {t: {m: pooled(r, method, m, (t,)) for m in lengths} for t in r["niah"][method]}}
    return table, settings


def interval(hits_n) -> str:
    hits, n = hits_n
    lo, hi = niah.wilson_interval(hits, n)
    return f"{hits / n:.2f} [{lo:.2f}, {hi:.2f}]"


def beats(table, a: str, b: str, length: str) -> bool | None:
    if a not in table or b not in table:
        return None
    return niah.wilson_interval(*table[a]["niah"][length])[0] > niah.wilson_interval(*table[b]["niah"][length])[1]


def verdict(value) -> str:
    return {True: "holds", False: "fails", None: "not run"}[value]


def readings(table) -> list[tuple[str, str, str]]:
    out = []
    # 1. DroPE's 1x perplexity within 2% of RoPE's
    for drope, rope in ((DROPE, "RoPE"), (SEED1, "RoPE (seed 1)")):
        if drope in table and rope in table:
            gap = table[drope]["ppl"]["1"] / table[rope]["ppl"]["1"] - 1
            out.append(("1", f"{drope} 1x perplexity {table[drope]['ppl']['1']:.3f} vs {rope} "
                             f"{table[rope]['ppl']['1']:.3f}: {gap:+.1%}", verdict(gap <= 0.02)))
    # 2. DroPE beats NoPE, ALiBi and RNoPE-SWA on NIAH at 2x and 4x beyond the intervals
    for length in ("2", "4"):
        for other in ("NoPE", "ALiBi", "RNoPE-SWA"):
            if DROPE in table and other in table:
                out.append(("2", f"NIAH {length}x: {DROPE} {interval(table[DROPE]['niah'][length])} vs {other} "
                                 f"{interval(table[other]['niah'][length])}",
                            verdict(beats(table, DROPE, other, length))))
    # 3. DroPE beats PI, NTK and YaRN at 2x (NIAH beyond the intervals; perplexity beside it)
    for other in ("PI", "NTK", "YaRN"):
        if DROPE in table and other in table:
            out.append(("3", f"2x: {DROPE} NIAH {interval(table[DROPE]['niah']['2'])}, perplexity "
                             f"{table[DROPE]['ppl']['2']:.2f} vs {other} {interval(table[other]['niah']['2'])}, "
                             f"{table[other]['ppl']['2']:.2f}", verdict(beats(table, DROPE, other, "2"))))
    # 4. the recalibration-length curve: descriptive, registered as "longer recalibration, 1x closer to RoPE"
    curve = [n for n in ("DroPE 12.5%", "DroPE 25%", "DroPE 50%") if n in table]
    if len(curve) == 3 and "RoPE" in table:
        gaps = [table[n]["ppl"]["1"] / table["RoPE"]["ppl"]["1"] - 1 for n in curve]
        out.append(("4", "1x perplexity gap to RoPE at 12.5/25/50% recalibration: "
                         + " / ".join(f"{g:+.1%}" for g in gaps), verdict(gaps[0] >= gaps[1] >= gaps[2])))
    return out


def write_report(table, settings, out: pathlib.Path) -> str:
    lengths = list(next(iter(table.values()))["ppl"])
    head = "| arm | " + " | ".join(f"{m}x ({settings['lengths'][m]})" for m in lengths) + " |"
    rule = "|---|" + "---:|" * len(lengths)
    lines = [f"Evaluated {settings['date']} on {settings['device']}; NIAH template {settings['template']!r}, "
             f"{settings['niah_samples']} prompts per (task, length, depth), depths {settings['depths']}; perplexity "
             f"on the same held-out text at every length ({settings['ppl_documents']} documents).", "",
             "Held-out perplexity", "", head, rule]
    lines += [f"| {n} | " + " | ".join(f"{t['ppl'][m]:.3f}" for m in lengths) + " |" for n, t in table.items()]
    lines += ["", "NIAH exact match, pooled over tasks and depths, with 95% Wilson intervals", "", head, rule]
    lines += [f"| {n} | " + " | ".join(interval(t["niah"][m]) for m in lengths) + " |" for n, t in table.items()]
    for task in niah.TASKS:
        lines += ["", f"NIAH {task}, pooled over depths", "", head, rule]
        lines += [f"| {n} | " + " | ".join(interval(t["tasks"][task][m]) for m in lengths) + " |"
                  for n, t in table.items() if task in t["tasks"]]
    lines += ["", "Readings (registered before the runs)", "", "| # | measured | verdict |", "|---|---|---|"]
    lines += [f"| {i} | {what} | {v} |" for i, what, v in readings(table)]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"settings": settings, "arms": table}, indent=1))
    plot(table, settings, out)
    return text


def plot(table, settings, out: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ppl_ax, niah_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, t) in enumerate(table.items()):
        xs = [settings["lengths"][m] for m in t["ppl"]]
        style = dict(linestyle="-" if name.startswith("DroPE") else "--", marker="o", color=plt.cm.tab20(i), label=name)
        ppl_ax.plot(xs, list(t["ppl"].values()), **style)
        niah_ax.plot(xs, [h / n for h, n in t["niah"].values()], **style)
    ppl_ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="held-out perplexity")
    niah_ax.set(xscale="log", xlabel="evaluation length (tokens)", ylabel="NIAH exact match (pooled)", ylim=(0, 1))
    niah_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "round3.png", dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gate", help="a gate evaluation's results.json: exit 0 when it passes")
    parser.add_argument("--gate_at", type=float, default=GATE, help="the gate's accuracy (a smoke test lowers it)")
    parser.add_argument("--root", help="the run.sh folder (SCIENCE_DIR)")
    parser.add_argument("--out", help="where report.md, summary.json and round3.png go")
    args = parser.parse_args()
    if args.gate:
        sys.exit(0 if gate(args.gate, args.gate_at) else 1)
    table, settings = load(pathlib.Path(args.root))
    if not table:
        sys.exit(f"no evaluations under {args.root}/eval")
    print(write_report(table, settings, pathlib.Path(args.out)))


if __name__ == "__main__":
    main()
