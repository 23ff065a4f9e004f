"""The evaluation's outputs in one directory: results.json, report.md and PNG plots."""

from __future__ import annotations

import io
import json

import numpy as np

from drope_jax import paths
from drope_jax.data import niah, pipeline


def write(results: dict, out_dir) -> list:
    out = paths.path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(markdown(results))
    written = [out / "results.json", out / "report.md"]
    import matplotlib
    matplotlib.use("Agg")
    if results["ppl"]:
        written += [plot_perplexity(results, out / "ppl_vs_length.png"),
                    plot_loss_by_position(results, out / "loss_by_position.png")]
    if results["niah"]:
        written.append(plot_niah(results, out / "niah_heatmap.png"))
    return written


def _length_header(results) -> list[str]:
    return [f"{m}x ({n})" for m, n in results["lengths"].items()]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def niah_mean(results, method: str, task: str | None = None, section: str = "niah") -> dict[str, float]:
    """Accuracy (or ``section``'s score) by length multiple, averaged over depths (and tasks when ``task`` is None)."""
    by_task = results[section][method]
    tasks = [task] if task else list(by_task)
    return {m: float(np.mean([a for t in tasks for a in by_task[t][m].values()])) for m in results["lengths"]}


def markdown(results: dict) -> str:
    run, s = results["run"], results["settings"]
    parts = [f"# Long-context evaluation of {run['init_from'] or run['workdir']}",
             f"Training context {run['context']} tokens; trained with {run['trained_positions']}, flip step "
             f"{run['flip_step']}; {results['device']}; {results['date']}; {results.get('seconds', '?')} s.", ""]
    methods = [f"- **{name}**: {m['weights']} (trained as {m['phase']}); at each length: "
               + "; ".join(f"{k}x {v}" for k, v in m["encoding"].items()) for name, m in results["methods"].items()]
    parts += ["Methods:", *methods, ""]
    if results.get("temperature"):
        parts += [_temperature_section(results), ""]
    if results["ppl"]:
        rows = [[name] + [f"{ppl[m]:.3f}" for m in results["lengths"]] for name, ppl in results["ppl"].items()]
        longest = list(results["lengths"].values())[-1]
        title = f"## Held-out perplexity (the same {s['ppl_sequences']} x {longest} held-out tokens at every length)"
        parts += [title, "",
                  _table(["method"] + _length_header(results), rows), ""]
    if results["niah"]:
        rows = []
        for name in results["niah"]:
            n = s["niah_samples"] * len(s["depths"])  # prompts pooled over depths
            for task in results["niah"][name]:
                means = niah_mean(results, name, task).values()
                rows.append([name, task] + [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v in means
                                            for lo, hi in [niah.wilson_interval(round(v * n), n)]])
            rows.append([name, "**mean**"] + [f"**{v:.2f}**" for v in niah_mean(results, name).values()])
        parts += [f"## NIAH exact-match accuracy (mean over depths {s['depths']}; {s['niah_samples']} prompts per "
                  f"task x length x depth; template {s['template']!r}; [95% Wilson interval over depths])", "",
                  _table(["method", "task"] + _length_header(results), rows), ""]
    if results.get("niah_answer_nll"):
        rows = [[name] + [f"{v:.2f}" for v in niah_mean(results, name, section="niah_answer_nll").values()]
                for name in results["niah_answer_nll"]]
        parts += ["## NIAH answer NLL (nats per token of the correct answer, teacher-forced, mean over tasks and "
                  "depths; lower: more retrieved)", "", _table(["method"] + _length_header(results), rows), ""]
    return "\n".join(parts)


def _temperature_section(results: dict) -> str:
    """The tempered methods' c, beta per length and, for a fit, the tuning perplexity without and with it."""
    rows = []
    for name, t in results["temperature"].items():
        tuning = ", ".join(f"{m}x {t['tuning_ppl_raw'][m]:.3f} -> {p:.3f}" for m, p in t["tuning_ppl"].items())
        how = t["how"] + (" (at the search's upper bound)" if t.get("at_bound") else "")
        rows.append([name, f"{t['c']:.3f}", how, ", ".join(f"{m}x {b:.3f}" for m, b in t["beta"].items()),
                     tuning or "-"])
    return "\n".join([
        "## Softmax temperature past the context",
        "",
        "Every attention logit times beta(s) = 1 + c ln(s) at s x the context (the DroPE paper, Appendix C.2). "
        "A fitted c minimises the mean held-out NLL at the lengths above 1x on the held-out split's tuning part "
        f"(every {pipeline.TUNING_EVERY}th held-out document), which the scores below never use.",
        "",
        _table(["method", "c", "how", "beta", "tuning perplexity without -> with"], rows)])


def plot_perplexity(results: dict, path):
    import matplotlib
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    lengths = list(results["lengths"].values())
    for name, ppl in results["ppl"].items():
        ax.plot(lengths, [ppl[m] for m in results["lengths"]], marker="o", label=name)
    ax.axvline(results["run"]["context"], color="grey", linestyle=":", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="held-out perplexity",
           title="Perplexity vs length (dotted: training context)")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_loss_by_position(results: dict, path):
    """Mean NLL by position bucket at the longest length, one line per method."""
    import matplotlib.pyplot as plt
    longest = list(results["lengths"])[-1]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by_length in results["loss_by_position"].items():
        entry = by_length[longest]
        centers = (np.arange(len(entry["nll"])) + 0.5) * entry["bucket_tokens"]
        ax.plot(centers, entry["nll"], marker=".", label=name)
    ax.axvline(results["run"]["context"], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="position (tokens)", ylabel="mean next-token NLL (nats)",
           title=f"Loss by position at {longest}x (dotted: training context)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_niah(results: dict, path):
    """Depth (rows) x length (columns) accuracy: one heatmap per method and task, plus their mean."""
    import matplotlib.pyplot as plt
    methods = list(results["niah"])
    tasks = list(results["niah"][methods[0]])
    columns = tasks + ["mean"]
    depths = [f"{d:g}" for d in results["settings"]["depths"]]
    lengths = list(results["lengths"])
    fig, axes = plt.subplots(len(methods), len(columns), figsize=(1.6 * len(columns) + 1, 1.5 * len(methods) + 0.8),
                             squeeze=False)
    for i, name in enumerate(methods):
        for j, column in enumerate(columns):
            use = tasks if column == "mean" else [column]
            grid = np.asarray([[np.mean([results["niah"][name][t][m][d] for t in use]) for m in lengths]
                               for d in depths])
            ax = axes[i, j]
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (r, c), v in np.ndenumerate(grid):
                ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
            ax.set_xticks(range(len(lengths)), [f"{m}x" for m in lengths], fontsize=6)
            ax.set_yticks(range(len(depths)), depths, fontsize=6)
            if i == 0:
                ax.set_title(column, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{name}\ndepth", fontsize=7)
    fig.suptitle("NIAH exact-match accuracy: depth x length", fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path):
    """Lays out, writes (to a local or cloud path) and closes a matplotlib figure."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    paths.path(path).write_bytes(png.getvalue())
    return paths.path(path)
