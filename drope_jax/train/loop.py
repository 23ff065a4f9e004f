"""The training job: RoPE until the flip step, NoPE after it, checkpoints, metrics, then the final table
(``eval.final_table``).

Relaunching with the same workdir resumes from the newest complete checkpoint, in the right phase.
"""

from __future__ import annotations

import functools
import json
import math
import time

import jax

from drope_jax import paths, sharding
from drope_jax.data import pipeline, retrieval
from drope_jax.errors import ConfigError, first_line, out_of_device_memory
from drope_jax.eval import final_table, perplexity
from drope_jax.model.state import count_params, init_params
from drope_jax.train import branch, checkpoint, metrics, optim, preemption, resume
from drope_jax.train.setup import Setup, make_setup

# Non-finite values this soon after a resume make the checkpoint resumed from a suspect.
SUSPECT_WITHIN_STEPS = 10


class TrainingStopped(RuntimeError):
    """Training stopped on purpose, e.g. on repeated non-finite losses; the last good checkpoint is kept."""


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def run(config, workdir, *, evaluate: bool = True) -> dict:
    """Trains as ``config`` says in ``workdir``, resuming from it if it holds a checkpoint.

    Returns the final evaluation (perplexity by context multiple), also written to ``eval.json``;
    ``evaluate=False`` skips it (a RoPE control, evaluated in its DroPE run's table).
    """
    workdir = paths.path(workdir)
    setup = make_setup(config)
    plan, mesh = setup.plan, setup.mesh
    corpus = pipeline.open_corpus(config.data)
    if corpus.vocab_size > plan.model.vocab_size:
        raise ConfigError(f"the dataset {corpus.path} has a vocab of {corpus.vocab_size}, larger than "
                          f"config.model.vocab_size ({plan.model.vocab_size}); raise it or use another dataset")
    source = branch.source_dir(config, workdir)
    if config.drope.rope_control and not branch.finished(source, plan):
        log(f"=== the RoPE control: this config without the flip, in {source} ===")
        run(branch.control_config(config, plan), source, evaluate=False)
        if not branch.finished(source, plan):  # stopped (SIGTERM, stop_at_step): a relaunch continues it
            return {}
        log(f"=== the DroPE run, branched from the RoPE control at step {plan.flip_step}, in {workdir} ===")
    checkpoint.ensure_writable(workdir / "checkpoints")
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                   preserve_steps=[s for s in (plan.flip_step, *config.checkpoint.keep_steps)
                                                   if s is not None],
                                   async_save=config.checkpoint.async_save)
    fallback = config.checkpoint.fallback_on_corrupt
    start_step = resume.resume_step(ckpt, plan, workdir, fallback=fallback, log=log)
    if jax.process_index() == 0:  # launch/evaluate.py reads the run's data, context and positions from it
        workdir.mkdir(parents=True, exist_ok=True)
        resolved = {"plan": plan.summary(config, source)}  # what the config implies, beside what it says
        (workdir / "config.json").write_text(json.dumps({**json.loads(config.to_json_best_effort()), **resolved},
                                                        indent=1))

    generated = retrieval.from_config(config.data, corpus, config.train.global_batch_size)
    if generated:
        log(f"data: {generated.describe(config.train.global_batch_size)}")
    data_iter = iter(pipeline.train_dataset(
        corpus.documents("train"), seq_len=config.data.seq_len, global_batch_size=config.train.global_batch_size,
        seed=config.data.shuffle_seed, process_index=jax.process_index(), process_count=jax.process_count(),
        document_masking=config.data.document_masking, generated=generated))

    log(f"model: {count_params(setup.spec.abstract_params):,} parameters; mesh {dict(mesh.shape)}; "
        f"{plan.describe()}")

    resumed_from = None  # the checkpoint this launch continues, if any
    with jax.set_mesh(mesh):
        if start_step is None and source is not None:
            state = branch.start_state(config, plan, source, setup.fresh_state,
                                       lambda: init_params(setup.spec, config.train.seed, mesh), data_iter, log)
            start_step = plan.flip_step
        elif start_step is None:
            params = init_params(setup.spec, config.train.seed, mesh)
            if config.init_from.startswith("hf:"):
                from drope_jax.hf import load_params  # lazily: the bridge needs safetensors
                params = load_params(config.init_from[3:], plan.model, params, log=log)
            elif config.init_from:
                params = checkpoint.load_params_from(config.init_from, params, log=log)
            state = setup.fresh_state(params)
            start_step = 0
        else:
            start_step, state = resume.restore(ckpt, start_step, setup.abstract_state(), data_iter, plan=plan,
                                               workdir=workdir, fallback=fallback, log=log)
            resumed_from = ckpt.directory / str(start_step)
            log(f"resumed from {ckpt.directory} at step {start_step} (next phase: {plan.phase(start_step)})")

        with preemption.Watch(ckpt) as preempt:
            end_step = train_loop(setup, state, data_iter, ckpt, start_step, workdir,
                                  perplexity.InTrainingEval(config, plan, setup.spec, corpus), preempt,
                                  resumed_from=resumed_from)
            ckpt.wait()
        if end_step < plan.total_steps:
            why = "preempted by SIGTERM" if preempt.stopped_at is not None else "config.train.stop_at_step"
            log(f"stopped at step {end_step} ({why}); its checkpoint is in {ckpt.directory}; relaunch the same "
                f"command to resume from step {end_step}")
            ckpt.close()
            return {}
        result = {}
        if evaluate:
            result = final_table.final_eval(config, plan, setup.spec, ckpt, corpus, mesh, source, log=log)
    ckpt.close()
    if jax.process_index() == 0 and evaluate:
        (workdir / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def train_loop(setup: Setup, state, data_iter, ckpt, start_step, workdir, evaluator=None, preempt=None,
               resumed_from=None):
    config, plan, mesh = setup.config, setup.plan, setup.mesh
    compiled = {}

    def step_fn(phase):
        if phase not in compiled:
            compiled[phase] = setup.phase_step(phase)
        return compiled[phase]

    writer = metrics.MetricsWriter(workdir, config.log, config.to_dict())
    pending = None  # (step, phase, device metrics): fetched one step late, so the host never waits on the step
    consecutive_faults = 0
    run_start = interval_start = time.time()  # the first interval includes compilation
    interval_steps = 0

    def finish(step, phase, device_metrics):
        nonlocal consecutive_faults, interval_start, interval_steps
        m = {k: v.item() for k, v in jax.device_get(device_metrics).items()}
        consecutive_faults = consecutive_faults + 1 if m["nonfinite"] else 0
        if consecutive_faults and (config.train.nonfinite == "stop"
                                   or consecutive_faults >= config.train.max_consecutive_nonfinite):
            culprit = " and ".join(f"{k} {m[k]}" for k in ("loss", "grad_norm") if not math.isfinite(m[k]))
            raise TrainingStopped(f"step {step + 1}: non-finite {culprit}; {consecutive_faults} step(s) in a row "
                                  f"were skipped (config.train.nonfinite={config.train.nonfinite!r}, "
                                  f"max_consecutive_nonfinite={config.train.max_consecutive_nonfinite}); "
                                  + suspect_or_kept(step + 2 - consecutive_faults))
        now = time.time()
        interval_steps += 1
        if (step + 1) % config.log.every_steps and step + 1 != plan.total_steps:
            return
        tokens_per_sec = interval_steps * plan.tokens_per_step / max(now - interval_start, 1e-9)
        mfu = metrics.mfu(tokens_per_sec, plan.model, config.data.seq_len, mesh.size)
        eta = (plan.total_steps - step - 1) * plan.tokens_per_step / tokens_per_sec
        record = {"step": step + 1, "tokens": (step + 1) * plan.tokens_per_step, "phase": phase,
                  "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                  "tokens_per_sec": tokens_per_sec, "skipped": m["nonfinite"]}
        if mfu is not None:
            record["mfu"] = mfu
        writer.write(record)
        encoding = plan.phase_pos(phase).kind  # the phase is "rope" before any flip, whatever config.positions says
        log(f"step {step + 1:>7,}/{plan.total_steps:,} | {encoding} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | "
            f"{tokens_per_sec / 1e3:,.1f}k tok/s | MFU {'n/a' if mfu is None else f'{mfu:.1%}'} | "
            f"ETA {metrics.format_duration(eta)}")
        interval_start, interval_steps = now, 0

    def suspect_or_kept(first_faulty_step):
        """The end of the message of a run stopped on non-finite values from ``first_faulty_step`` (as logged)."""
        if resumed_from is None or first_faulty_step - start_step > SUSPECT_WITHIN_STEPS:
            return f"the last good checkpoint in {ckpt.directory} is kept"
        return (f"the faults began {first_faulty_step - start_step} step(s) after this run resumed from "
                f"{resumed_from}, so suspect that checkpoint (damaged in a way its fingerprints cannot show, or "
                f"written before they existed): move it aside (mv {resumed_from} {resumed_from}.suspect), with any "
                "checkpoint saved since, and relaunch to resume from the one before it")

    def save(step):
        meta = {"step": step, "phase": plan.phase(step - 1) if step else "rope", "flip_step": plan.flip_step,
                "tokens": step * plan.tokens_per_step, "model": plan.model.to_dict(),
                "qk_norm_at_flip": config.drope.qk_norm_at_flip, "process_count": jax.process_count()}
        ckpt.save(step, state, data_iter.get_state(), meta)
        clock.reset()

    clock = checkpoint.SaveClock(config.checkpoint.every_minutes, check_every=config.log.every_steps)

    end_step = plan.total_steps if config.train.stop_at_step is None else min(config.train.stop_at_step,
                                                                             plan.total_steps)
    try:
        for step in range(start_step, end_step):
            if preempt is not None and preempt.reached(step):
                end_step = step  # saved below, unless nothing was trained since the resume
                break
            if step == plan.flip_step:
                if step != start_step:
                    save(step)  # the last RoPE-phase state: kept whatever the keep-N policy says
                state = apply_flip(setup, state, step)
            elif (step % config.checkpoint.every_steps == 0 or step in config.checkpoint.keep_steps
                  or clock.due(step)) and step != start_step:
                save(step)
            batch = jax.tree.map(lambda x: sharding.host_batch_to_global(x, mesh), next(data_iter))
            phase = plan.phase(step)
            compiles, started = phase not in compiled, time.time()
            state, device_metrics = step_fn(phase)(state, batch)
            if compiles:  # minutes for a large model, before the first progress line: say when it is done
                jax.block_until_ready(device_metrics)
                compiled_in = time.time() - started
            if evaluator is not None and evaluator.due(step + 1):
                writer.write(evaluator(state["params"], step + 1, phase))
            if pending is not None:
                finish(*pending)
            pending = (step, phase, device_metrics)
            if compiles:  # after the previous step's progress line
                kind = plan.phase_pos(phase).kind
                log(f"compiled the {kind} train step and ran step {step + 1} in {compiled_in:.1f} s")
        if pending is not None:
            finish(*pending)
        if start_step < end_step:
            save(end_step)
    except OSError as e:  # metrics.jsonl or the event file: e.g. the disk is full
        ckpt.settle()
        raise TrainingStopped(f"cannot write to {workdir} ({e}); {ckpt.kept()}. Free space there and relaunch "
                              "the same command") from e
    except jax.errors.JaxRuntimeError as e:
        if not out_of_device_memory(e):
            raise
        ckpt.settle()
        accum = config.train.grad_accum
        raise TrainingStopped(
            f"out of device memory at step {step + 1} (XLA: {first_line(e, 300)}); "
            f"{ckpt.kept()}. Give each device less to hold: raise config.train.grad_accum (now {accum}; e.g. "
            f"--config.train.grad_accum={2 * accum}), set --config.model.remat=full, or use more devices. "
            "launch/aot_compile.py --search_grad_accum finds the grad_accum that fits a TPU slice, on any host"
        ) from e
    except BaseException:
        ckpt.settle()  # a good checkpoint still being written is finished, not lost
        raise
    finally:
        writer.close()
        log(f"training took {metrics.format_duration(time.time() - run_start)}")
    return end_step


def apply_flip(setup: Setup, state, step: int):
    """Entering the first NoPE step. Applied again on a resume from the flip checkpoint, with the same result."""
    d, plan = setup.config.drope, setup.plan
    if d.reset_opt_state:
        moments = "fresh AdamW moments for every parameter"
    else:
        moments = "AdamW moments carried over" + (" (fresh for the QK-norm gains, which start training now)"
                                                   if plan.qk_norm_at_flip else "")
    before = {"rope": "RoPE", "alibi": "ALiBi"}.get(plan.pos.kind, plan.pos.kind)
    change = (f"{before} -> NoPE in every layer; {moments}" if step else
              "NoPE in every layer from the first step (NoPE from scratch)")
    log(f"=== flip at step {step}: {change}; QK-norm switched on: {plan.qk_norm_at_flip}; "
        f"{plan.describe_recal() if plan.recal else 'LR: config.optim throughout'} ===")
    if d.reset_opt_state or plan.qk_norm_at_flip:
        opt_state = jax.jit(functools.partial(optim.restart_moments, setup.tx, everything=d.reset_opt_state),
                            out_shardings=setup.state_sh["opt_state"], donate_argnums=(0,))(
            state["opt_state"], state["params"])
        state = dict(state, opt_state=opt_state)
    return state
