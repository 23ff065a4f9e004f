"""Round 4's readings, from the evaluations that experiments/round4/run.sh writes (ROOT/bBUDGET/eval/ARM).

  python experiments/round4/report.py --root=ROOT --out=DIR      # DIR/report.md, summary.json, round4.png

The readings are the ones registered in docs/reproduction.md before the runs. DroPE there is the 12.5% tail
evaluated with its fitted temperature (method drope), the 25% tail and the temperature-off numbers (drope_raw)
beside it; NoPE is nope with its own fitted temperature. "The largest budget" is 24 (or 34, if it ran): until
one of them is evaluated, readings 1, 3, 4 and 5 are computed at the largest budget evaluated and marked
interim, never given a verdict. NIAH
accuracy is pooled over the four tasks and five depths (960 prompts per method and length at 48 a cell) with a
95% Wilson interval; "beats X beyond the intervals" means DroPE's lower bound lies above X's upper bound.
"""

import argparse
import json
import pathlib
import sys

from drope_jax.data import niah
from drope_jax.run_config import load_module

ROUND3 = load_module(pathlib.Path(__file__).parents[1] / "round3" / "report.py")
pooled, interval, verdict, beats = ROUND3.pooled, ROUND3.interval, ROUND3.verdict, ROUND3.beats
CONFIG = load_module(pathlib.Path(__file__).with_name("config.py"))
PAPER_C = 0.412  # the paper's fit for its from-scratch 0.5B model (Appendix C.2)
WITHIN = 0.05  # reading 1: DroPE's 1x perplexity at most 5% above RoPE's
REGISTERED_LARGEST = ("24", "34")  # the budgets that readings 1, 3, 4 and 5 were registered at
# (evaluation folder, method in it) -> the name in the report
ARMS = {("rope", "rope"): "RoPE", ("rope", "pi"): "PI", ("rope", "ntk"): "NTK", ("rope", "yarn"): "YaRN",
        ("drope_r12", "drope"): "DroPE 12.5%", ("drope_r12", "drope_raw"): "DroPE 12.5%, no temperature",
        ("drope_r25", "drope"): "DroPE 25%", ("drope_r25", "drope_raw"): "DroPE 25%, no temperature",
        ("nope", "nope"): "NoPE", ("nope", "nope_raw"): "NoPE, no temperature",
        ("alibi", "alibi"): "ALiBi", ("rnope_swa", "rnope_swa"): "RNoPE-SWA"}
DROPE, DROPE25 = "DroPE 12.5%", "DroPE 25%"


def budget_key(budget: str) -> float:
    return float(budget)


HOW_RUN = ("methods", "batch_size", "query_chunk")  # evaluation settings that change no score


def load(root: pathlib.Path) -> tuple[dict, dict]:
    """{budget: {name: {"ppl", "niah", "tasks", "c", "at_bound"}}}, and the evaluation settings."""
    tables, settings, first, dates, devices = {}, {}, None, [], set()
    for folder in sorted(root.glob("b*/eval"), key=lambda p: budget_key(p.parent.name[1:])):
        budget, table = folder.parent.name[1:], {}
        for (arm, method), name in ARMS.items():
            path = folder / arm / "results.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text())
            if method not in r["ppl"]:
                continue
            protocol = {"niah_needles": 4, **{k: v for k, v in r["settings"].items() if k not in HOW_RUN},
                        "lengths": r["lengths"]}  # {multiple: tokens}, in place of the settings' list of multiples
            if first is not None and protocol != settings:  # a table may only set side by side what is comparable
                raise SystemExit(f"report.py: {path} was evaluated with {protocol}, {first} with {settings}: "
                                 "evaluate every arm with run.sh's one protocol")
            first, settings = first or path, protocol
            dates.append(r["date"])
            devices.add(r["device"])
            lengths = list(r["ppl"][method])
            temperature = r.get("temperature", {}).get(method, {})
            table[name] = {"ppl": r["ppl"][method], "niah": {m: pooled(r, method, m) for m in lengths},
                           "tasks": {t: {m: pooled(r, method, m, (t,)) for m in lengths} for t in r["niah"][method]},
                           "c": temperature.get("c"), "at_bound": temperature.get("at_bound")}
        if table:
            tables[budget] = table
    if dates:
        settings.update(dates=[min(dates), max(dates)], device="; ".join(sorted(devices)))
    return tables, settings


def gap(table, name: str) -> float | None:
    if name not in table or "RoPE" not in table:
        return None
    return table[name]["ppl"]["1"] / table["RoPE"]["ppl"]["1"] - 1


def niah_at(table, name: str, length: str = "2") -> str:
    return interval(table[name]["niah"][length]) if name in table else "not run"


def readings(tables: dict) -> list[tuple[str, str, str]]:
    out = []
    if not tables:
        return out
    largest = max(tables, key=budget_key)
    top = tables[largest]
    final = largest in REGISTERED_LARGEST

    def at_largest(holds) -> str:  # the verdict of readings 1, 3, 4 and 5, or why there is none yet
        return holds if final else f"interim (registered at budget {REGISTERED_LARGEST[0]}, not yet run)"

    # 1. at the largest budget, DroPE (12.5%) within 5% of RoPE's 1x perplexity
    for name in (DROPE, DROPE25):
        g = gap(top, name)
        if g is not None:
            out.append(("1" if name == DROPE else "1, beside", f"budget {largest}: {name} 1x perplexity "
                        f"{top[name]['ppl']['1']:.3f} vs RoPE {top['RoPE']['ppl']['1']:.3f}: {g:+.1%}",
                        at_largest(verdict(g <= WITHIN)) if name == DROPE else "-"))
    # 2. the 1x gap shrinks as tokens per parameter grow
    for name in (DROPE, DROPE25):
        gaps = {b: gap(t, name) for b, t in tables.items() if gap(t, name) is not None}
        if gaps:
            values = [gaps[b] for b in sorted(gaps, key=budget_key)]
            shrinks = all(a > b for a, b in zip(values, values[1:])) if len(values) >= 3 else None
            out.append(("2" if name == DROPE else "2, beside", f"{name} 1x gap to RoPE by tokens per parameter, "
                        + " / ".join(f"{b}: {gaps[b]:+.1%}" for b in sorted(gaps, key=budget_key)),
                        verdict(shrinks) if name == DROPE else "-"))
    # 3. DroPE with its temperature beats NoPE with its temperature on NIAH at 2x, beyond the intervals
    # 4. ... and PI, NTK and YaRN (the paper's Table 1); the temperature-off numbers and perplexity beside
    raw = f"{DROPE}, no temperature"
    for number, others in (("3", ("NoPE",)), ("4", ("PI", "NTK", "YaRN"))):
        for other in others:
            if DROPE in top and other not in top:
                out.append((number, f"budget {largest}, NIAH 2x: {other} not evaluated", "not run"))
            elif DROPE in top:
                out.append((number, f"budget {largest}, NIAH 2x: {DROPE} {niah_at(top, DROPE)} (no temperature "
                                    f"{niah_at(top, raw)}), perplexity {top[DROPE]['ppl']['2']:.2f} vs {other} "
                                    f"{niah_at(top, other)}, {top[other]['ppl']['2']:.2f}",
                            at_largest(verdict(beats(top, DROPE, other, "2")))))
    # 5. the fitted c against the paper's 0.412 (descriptive: "agrees" within a factor of two)
    for budget, table in sorted(tables.items(), key=lambda kv: budget_key(kv[0])):
        for name in (DROPE, DROPE25, "NoPE"):
            if name in table and table[name]["c"] is not None:
                c = table[name]["c"]
                flag = " (at the search bound)" if table[name]["at_bound"] else ""
                headline = name == DROPE and budget == largest
                agrees = "agrees" if PAPER_C / 2 <= c <= 2 * PAPER_C else "differs"
                out.append(("5" if headline else "5, beside", f"budget {budget}: {name} fitted c = {c:.3f}{flag} "
                            f"vs the paper's {PAPER_C}", at_largest(agrees) if headline else "-"))
    return out


def write_report(tables, settings, out: pathlib.Path, sweep: str = "") -> str:
    lengths = list(settings["lengths"])
    head = "| arm | " + " | ".join(f"{m}x ({settings['lengths'][m]})" for m in lengths) + " |"
    rule = "|---|" + "---:|" * len(lengths)
    lines = [f"Evaluated from {settings['dates'][0]} to {settings['dates'][1]} on {settings['device']}; "
             f"NIAH template {settings['template']!r}, "
             f"{settings['niah_samples']} prompts per (task, length, depth), depths {settings['depths']}, "
             f"{settings['niah_needles']} needles in every multi-needle task; perplexity on the same held-out text "
             "at every length. Budgets in tokens per parameter."]
    if sweep:
        lines += ["", "The registered LR sweep (12.5% tail, budget 14; ratio to the pretraining peak, 1x held-out "
                  "perplexity at the end of training): " + sweep]
    for budget, table in tables.items():
        steps = CONFIG.BUDGETS.get(budget)
        tokens = f", {steps * CONFIG.TOKENS_PER_STEP / 1e6:,.0f}M tokens" if steps else ""
        lines += ["", f"### Budget {budget} tokens per parameter{tokens}", "", "Held-out perplexity", "", head, rule]
        lines += [f"| {n} | " + " | ".join(f"{t['ppl'][m]:.3f}" for m in lengths) + " |" for n, t in table.items()]
        lines += ["", "NIAH exact match, pooled over tasks and depths, with 95% Wilson intervals", "", head, rule]
        lines += [f"| {n} | " + " | ".join(interval(t["niah"][m]) for m in lengths) + " |" for n, t in table.items()]
        lines += ["", "NIAH per task at 1x and 2x", "",
                  "| arm | " + " | ".join(f"{t} 1x | 2x" for t in niah.TASKS) + " |", "|---|" + "---:|" * 8]
        lines += [f"| {n} | " + " | ".join(f"{_rate(t['tasks'][task]['1'])} | {_rate(t['tasks'][task]['2'])}"
                                           for task in niah.TASKS) + " |"
                  for n, t in table.items() if set(niah.TASKS) <= set(t["tasks"]) and "2" in t["niah"]]
        fitted = [f"{n} c = {t['c']:.3f}{' (at the bound)' if t['at_bound'] else ''}" for n, t in table.items()
                  if t["c"] is not None]
        if fitted:
            lines += ["", "Fitted temperature, beta(s) = 1 + c ln(s): " + "; ".join(fitted)]
    lines += ["", "Readings (registered before the runs)", "", "| # | measured | verdict |", "|---|---|---|"]
    lines += [f"| {i} | {what} | {v} |" for i, what, v in readings(tables)]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"settings": settings, "budgets": tables, "sweep": sweep}, indent=1))
    plot(tables, settings, out)
    return text


def _rate(hits_n) -> str:
    return f"{hits_n[0] / hits_n[1]:.2f}"


def plot(tables, settings, out: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tables), 2, figsize=(12, 4 * len(tables)), squeeze=False)
    for (budget, table), (ppl_ax, niah_ax) in zip(tables.items(), axes):
        for i, (name, t) in enumerate(table.items()):
            xs = [settings["lengths"][m] for m in t["ppl"]]
            style = dict(linestyle="-" if name.startswith("DroPE") else "--", marker="o", color=plt.cm.tab20(i),
                         label=name)
            ppl_ax.plot(xs, list(t["ppl"].values()), **style)
            niah_ax.plot(xs, [h / n for h, n in t["niah"].values()], **style)
        ppl_ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="held-out perplexity",
                   title=f"{budget} tokens per parameter")
        niah_ax.set(xscale="log", xlabel="evaluation length (tokens)", ylabel="NIAH exact match (pooled)", ylim=(0, 1))
        niah_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "round4.png", dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="the run.sh folder (SCIENCE_DIR), holding bBUDGET/eval")
    parser.add_argument("--out", required=True, help="where report.md, summary.json and round4.png go")
    args = parser.parse_args()
    root = pathlib.Path(args.root)
    tables, settings = load(root)
    if not tables:
        sys.exit(f"no evaluations under {args.root}/b*/eval")
    sweep_file = root / "b14" / "logs" / "sweep.txt"
    lines = sweep_file.read_text().splitlines() if sweep_file.is_file() else []
    sweep = "; ".join(f"{ratio}x -> {float(ppl):.3f}" for ratio, ppl in map(str.split, lines))
    print(write_report(tables, settings, pathlib.Path(args.out), sweep))


if __name__ == "__main__":
    main()
