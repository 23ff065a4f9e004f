"""Tables and plots of docs/reproduction.md, from the raw files committed beside it.

  python experiments/drope_small/report.py [--data=docs/reproduction]

DATA/roundN/ARM/ holds what experiments/drope_small/run.sh leaves in a run's workdir: config.json,
metrics.jsonl (training curve and in-training perplexity), eval.json (the end-of-training
perplexity) and results.json (launch/evaluate.py). Round 1 asked the NIAH questions in RULER's
English; round 2 retrained rope, drope and nope and asked them as code (--template=code). Writes
DATA/*.png and prints the markdown tables.
"""

import argparse
import json
import pathlib

import numpy as np

from drope_jax.eval import report

ARM_LABELS = {"rope": "RoPE", "nope": "NoPE", "drope": "DroPE", "drope_qknorm": "DroPE + QK-norm"}


def load_round(directory: pathlib.Path) -> dict:
    arms = {}
    for arm_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        records = [json.loads(line) for line in (arm_dir / "metrics.jsonl").read_text().splitlines()]
        arms[arm_dir.name] = {"metrics": records, "results": json.loads((arm_dir / "results.json").read_text()),
                              "config": json.loads((arm_dir / "config.json").read_text())}
    return arms


def merged_results(arms: dict) -> dict:
    """One evaluator-shaped results dict over the arms; an arm's own "drope" method is named after the arm."""
    first = next(iter(arms.values()))["results"]
    sections = ("methods", "ppl", "loss_by_position", "niah", "niah_answer_nll", "niah_examples")
    merged = {**first, **{section: {} for section in sections}}
    for arm, run in arms.items():
        for section in sections:  # niah_answer_nll: only in results written after 2026-11-26's runs
            for method, value in run["results"].get(section, {}).items():
                merged[section][arm if method == "drope" else method] = value
    return merged


def smooth(values, window: int = 10):
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training(arms: dict, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(11, 3.8))
    flip = next(r["config"]["drope"]["flip_step"] for r in arms.values() if r["config"]["drope"]["flip_step"])
    total, window = next(iter(arms.values()))["config"]["train"]["total_steps"], 10
    for arm, run in arms.items():
        train = [r for r in run["metrics"] if "loss" in r]
        steps, loss = np.array([r["step"] for r in train]), np.array([r["loss"] for r in train])
        for ax in (full, zoom):
            ax.plot(steps[window - 1:], smooth(loss, window), label=ARM_LABELS.get(arm, arm), linewidth=1.2)
    for ax in (full, zoom):
        ax.axvline(flip, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="step (65,536 tokens each)", ylabel="training loss (mean of 10 logged steps)")
    full.set(title="Training loss (dotted: the flip to NoPE)", ylim=(1.4, 3.0))
    zoom.set(title="Around the flip", xlim=(flip - 400, total), ylim=(1.4, 3.4))
    full.legend(fontsize=8)
    report.save_figure(fig, path)


def plot_in_training_ppl(arms: dict, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, multiple in zip(axes, ("1x", "2x")):
        for arm, run in arms.items():
            evals = [r for r in run["metrics"] if f"eval/ppl_{multiple}" in r]
            ax.plot([r["step"] for r in evals], [r[f"eval/ppl_{multiple}"] for r in evals], marker=".",
                    label=ARM_LABELS.get(arm, arm))
        ax.set(xlabel="step", ylabel="held-out perplexity", yscale="log",
               title=f"Held-out perplexity at {multiple} the context, during training")
    axes[0].legend(fontsize=8)
    report.save_figure(fig, path)


def claims(main: dict, ruler: dict) -> str:
    ppl = main["ppl"]
    lines = ["| method | " + " | ".join(f"ppl {m}x" for m in main["lengths"]) + " | " +
             " | ".join(f"NIAH {m}x (code / RULER)" for m in ("1", "2", "4")) + " |",
             "|---" * (1 + len(main["lengths"]) + 3) + "|"]
    for method in ppl:
        code = report.niah_mean(main, method)
        english = report.niah_mean(ruler, method) if method in ruler["niah"] else None
        cells = [f"{ppl[method][m]:.2f}" for m in main["lengths"]]
        cells += [f"{code[m]:.2f} / {english[m]:.2f}" if english else f"{code[m]:.2f} / -" for m in ("1", "2", "4")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_table(arms: dict, steps=(400, 1400, 2800, 2900, 3000, 3100, 3200)) -> str:
    """Training loss, mean over the 5 logged steps (100 steps) ending at each step."""
    header = "| arm | " + " | ".join(f"step {s}" for s in steps) + " |"
    lines = [header, "|---" * (len(steps) + 1) + "|"]
    for arm, run in arms.items():
        loss = {r["step"]: r["loss"] for r in run["metrics"] if "loss" in r}
        means = [np.mean([loss[s - 20 * i] for i in range(5) if s - 20 * i in loss]) for s in steps]
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="docs/reproduction")
    args = parser.parse_args()
    data = pathlib.Path(args.data)
    import matplotlib
    matplotlib.use("Agg")

    round1, round2 = load_round(data / "round1"), load_round(data / "round2")
    curve_arms = {**round2, "drope_qknorm": round1["drope_qknorm"]}
    main_results = merged_results(curve_arms)  # round 2's arms, and the QK-norm arm from round 1
    ruler_results = merged_results(round1)
    plot_training(curve_arms, data / "training_loss.png")
    plot_in_training_ppl(curve_arms, data / "in_training_ppl.png")
    report.plot_perplexity(main_results, data / "ppl_vs_length.png")
    report.plot_loss_by_position(main_results, data / "loss_by_position.png")
    report.plot_niah(merged_results(round2), data / "niah_heatmap_code.png")
    report.plot_niah(ruler_results, data / "niah_heatmap_ruler.png")
    print("## Results (round 2; DroPE + QK-norm from round 1)\n")
    print(claims(main_results, ruler_results))
    print("\n## Training loss, round 2 (+ QK-norm arm, round 1)\n")
    print(loss_table(curve_arms))
    print("\n## Round 1 vs round 2 perplexity (the same config retrained: GPU nondeterminism)\n")
    for method in ruler_results["ppl"]:
        if method in main_results["ppl"] and method != "drope_qknorm":
            a, b = ruler_results["ppl"][method], main_results["ppl"][method]
            print(f"- {method}: " + ", ".join(f"{m}x {a[m]:.3f} / {b[m]:.3f}" for m in a))
    print("\n## NIAH examples, round 2, middle depth\n")
    for method, tasks in merged_results(round2)["niah_examples"].items():
        example = tasks["passkey"]["1"]
        print(f"- {method} passkey 1x: expected {example['expected']!r}, generated {example['generated']!r}")


if __name__ == "__main__":
    main()
