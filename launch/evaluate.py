"""Long-context evaluation: perplexity by length and RULER-style needle tasks, for DroPE and every baseline.

  python launch/evaluate.py --workdir=DIR [--step=N] [--init_from=hf:DIR] \
      --methods=drope,rope,pi,ntk,yarn --lengths=1,2,4,8 --tasks=ppl,niah

Lengths are multiples of the training context (config.data.seq_len). For a DroPE run the RoPE
baselines (rope, pi, ntk, yarn) use the flip-step checkpoint, or the annealed RoPE run it branched from, and
drope the final (or --step) one.
drope evaluates as the DroPE paper does: past the context every attention logit is multiplied by
beta(s) = 1 + c ln(s) at s x the context, c fitted per model on held-out tuning text (--temperature);
drope_raw is the same weights without it. Other methods: drope_logn (NoPE with log-n query scaling), and
nope (tempered like drope; nope_raw without), alibi, rnope_swa for runs trained with them from scratch;
NAME@WORKDIR takes a method's weights from another run. The run's config is
read from DIR/config.json (written by launch/tpu_run.py), or given with --config. Writes DIR/eval/:
results.json, report.md, ppl_vs_length.png, loss_by_position.png, niah_heatmap.png.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from drope_jax import distributed
from drope_jax.data import niah
from drope_jax.errors import ConfigError, first_line, out_of_device_memory
from drope_jax.eval import report, suite
from drope_jax.eval.methods import Run, parse_methods
from drope_jax.launch_utils import (
    define_compilation_cache_flag,
    parse_flags_or_exit,
    use_compilation_cache,
    word_or_number,
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (default: WORKDIR/config.json).")
_CACHE = define_compilation_cache_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir; results go to WORKDIR/eval.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for drope and from-scratch methods (default: latest).")
_INIT_FROM = flags.DEFINE_string("init_from", "", "hf:DIR: evaluate a Hugging Face checkpoint (needs --config).")
_METHODS = flags.DEFINE_string("methods", "drope,drope_raw,rope,pi,ntk,yarn",
                               "Comma-separated methods (NAME or NAME@WORKDIR).")
_LENGTHS = flags.DEFINE_list("lengths", ["1", "2", "4", "8"], "Multiples of the training context.")
_TASKS = flags.DEFINE_list("tasks", ["ppl", "niah"], "ppl and/or niah.")
_NIAH_TASKS = flags.DEFINE_list("niah_tasks", list(niah.TASKS), "NIAH tasks.")
_DEPTHS = flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "Needle depths, fractions of the haystack.")
_SAMPLES = flags.DEFINE_integer("niah_samples", 8, "Prompts per NIAH task x length x depth.")
_NEEDLES = flags.DEFINE_integer("niah_needles", 4, "(key, value) pairs in every multi-needle task (multikey, "
                                "multivalue, multiquery); the DroPE paper's protocol uses four.")
_SEQUENCES = flags.DEFINE_integer("ppl_sequences", 16, "Held-out sequences per length for perplexity.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Rows per forward pass at the longest length; shorter lengths "
                             "take as many tokens per pass (more rows).")
_CHUNK = flags.DEFINE_integer("query_chunk", None, "Attention queries per chunk (memory linear in length); 0: "
                              "none. Default: 256 on CPU (2.4x faster attention than none at 512 tokens); none on "
                              "GPU/TPU, whose fused kernels need no T x T memory.")
_TEMPLATE = flags.DEFINE_enum("template", "auto", ["auto", *niah.TEMPLATES], "NIAH wording.")
_VALUES = flags.DEFINE_enum("values", "number", ["number", "word"], "NIAH needle values.")
_SEED = flags.DEFINE_integer("seed", 0, "NIAH seed.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval).")
_TEMPERATURE = flags.DEFINE_string(
    "temperature", "fit", "The softmax temperature of drope and nope past the context, beta(s) = 1 + c ln(s): "
    "'fit' (c minimising perplexity on the held-out split's tuning part at the lengths above 1x, per model), "
    "a number c (the paper's fits: 0.412 for its from-scratch 0.5B model, 0.103 for SmolLM-360M-DroPE), "
    "or 'off' (c = 0).")
_TEMPERATURE_SEQUENCES = flags.DEFINE_integer("temperature_sequences", 8, "Tuning rows at the longest length "
                                              "for --temperature=fit.")


def _temperature_c() -> float | None:
    """--temperature as ``Settings.temperature_c``: None to fit, 0 for off, else the number."""
    value = word_or_number("temperature", _TEMPERATURE.value, ("fit", "off"))
    return {"fit": None, "off": 0.0}.get(value, value)


def _default_chunk() -> int:
    return 256 if jax.devices()[0].platform == "cpu" else 0


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    use_compilation_cache(_CACHE.value)
    distributed.initialize_if_needed()
    try:
        settings = suite.Settings(
            methods=tuple(parse_methods(_METHODS.value)), lengths=tuple(int(m) for m in _LENGTHS.value),
            tasks=tuple(_TASKS.value), niah_tasks=tuple(_NIAH_TASKS.value),
            depths=tuple(float(d) for d in _DEPTHS.value), niah_samples=_SAMPLES.value, niah_needles=_NEEDLES.value,
            ppl_sequences=_SEQUENCES.value, batch_size=_BATCH.value,
            query_chunk=_default_chunk() if _CHUNK.value is None else _CHUNK.value,
            template=_TEMPLATE.value, values=_VALUES.value, seed=_SEED.value,
            temperature_c=_temperature_c(), temperature_sequences=_TEMPERATURE_SEQUENCES.value)
        run = Run(_WORKDIR.value, config=_CONFIG.value, step=_STEP.value, init_from=_INIT_FROM.value)
        results = suite.evaluate(run, settings)
        results["command"] = " ".join(["python"] + sys.argv)
        if jax.process_index() != 0:  # every process computed the same results; one writes them
            return
        written = report.write(results, _OUT.value or f"{_WORKDIR.value}/eval")
    except ConfigError as e:
        sys.exit(f"error: {e}")
    except jax.errors.JaxRuntimeError as e:
        if not out_of_device_memory(e):
            raise
        sys.exit(f"error: out of device memory (XLA: {first_line(e, 300)}). Give each forward pass less: lower "
                 f"--batch_size (now {_BATCH.value}: rows per pass at the longest length), or set --query_chunk=256 "
                 "(attention memory linear in the length)")
    print(report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
