"""The table a training run ends with: held-out perplexity at each context multiple, on the same text at
every length, for the last RoPE-phase model, the RoPE control and the final model; a final NoPE model also
with the DroPE paper's softmax temperature, fitted on the held-out split's tuning part (``temperature``).
It runs the evaluation's perplexity pipeline (``perplexity``) with ``config.eval``'s knobs."""

from __future__ import annotations

from drope_jax.data import pipeline
from drope_jax.errors import ConfigError
from drope_jax.eval import perplexity, temperature
from drope_jax.model.positions import NOPE
from drope_jax.run_config import Plan
from drope_jax.train import branch


def final_eval(config, plan: Plan, spec, ckpt, corpus: pipeline.Corpus, mesh, source=None, log=print) -> dict:
    """Held-out perplexity at each context multiple, on the same text at every length, for the last
    RoPE-phase model, the RoPE control (when branched from one that ran to the same budget) and the final one."""
    models = []  # (name, the RoPE run it comes from or None for this one, step, position encoding, QK-norm on)
    if plan.flip_step:
        models.append((f"{plan.pos.kind} (step {plan.flip_step}, before the flip)", source, plan.flip_step,
                       plan.pos, plan.uses_qk_norm("rope")))
    if source is not None and branch.finished(source, plan):
        models.append((f"{plan.pos.kind} control (step {plan.total_steps}, final)", source, plan.total_steps,
                       plan.pos, plan.uses_qk_norm("rope")))
    label = {None: plan.pos.kind, 0: "nope"}.get(plan.flip_step, "drope")
    models.append((f"{label} (step {plan.total_steps}, final)", None, plan.total_steps,
                   NOPE if plan.flip_step is not None else plan.pos, True))

    lengths = [m * config.data.seq_len for m in config.eval.lengths]
    results = {"train_context": config.data.seq_len, "lengths": lengths, "perplexity": {}}
    sequences, results["documents"] = pipeline.same_text_rows(corpus, config.data.seq_len, config.eval.lengths,
                                                          config.eval.num_sequences)
    title = f"held-out perplexity ({results['documents']} docs)"
    rows = [f"{title:<36}" + "".join(f"{f'{m}x ({n})':>14}" for m, n in zip(config.eval.lengths, lengths))]
    abstract = spec.placed_params(mesh)
    rows_per_batch = perplexity.batch_rows(config.eval.batch_size, config.eval.lengths)

    def add_row(name, params, pos_at, use_qk):
        ppl = [perplexity.perplexity(spec, params, sequences[m], pos_at(m), use_qk_norm=use_qk,
                                     batch_size=rows_per_batch[m]) for m in config.eval.lengths]
        results["perplexity"][name] = dict(zip(map(str, config.eval.lengths), ppl))
        rows.append(f"{name:<36}" + "".join(f"{p:>14.3f}" for p in ppl))

    for name, where, step, pos, use_qk in models:
        params = ckpt.restore_params(step, abstract) if where is None else branch.params_at(where, step, spec, mesh)
        add_row(name, params, lambda m, pos=pos: pos, use_qk)
    fitted = _fit_temperature(config, spec, params, corpus, rows_per_batch, log) if pos == NOPE else None
    if fitted is not None:  # the final model (the loop's last: pos, params) is NoPE: also as the paper evaluates it
        results["temperature"] = fitted.to_json(config.eval.lengths)
        add_row(f"{label} + temperature c={fitted.c:.2f}", params, lambda m: temperature.encoding(fitted.c, m), True)
    log("\n".join(rows))
    if fitted is not None:
        log(f"temperature: every attention logit x (1 + c ln s) at s x the context, c fitted on held-out tuning "
            f"text ({fitted.tuning_documents} documents the table does not score)")
    return results


def _fit_temperature(config, spec, params, corpus, rows_per_batch, log) -> temperature.Temperature | None:
    """The paper's temperature for a NoPE model, fitted on the held-out split's tuning part at the lengths
    above 1x; None without such lengths or tuning text (the run has trained: the table goes on without it)."""
    try:
        tuning, documents = temperature.tuning_rows(corpus, config.data.seq_len, config.eval.lengths,
                                                    max(config.eval.num_sequences // 2, 1))
    except ConfigError as e:
        log(f"no temperature row: {e}")
        return None
    if not tuning:
        return None
    return temperature.fit_on(spec, params, tuning, use_qk_norm=True, rows_per_batch=rows_per_batch,
                              tuning_documents=documents)
