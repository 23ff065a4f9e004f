"""Export a checkpoint to a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads.

  python launch/convert_to_hf.py --workdir=DIR [--step=N] --out=OUT [--dtype=bfloat16|float32] [--tokenizer=HF_DIR]
      [--temperature=auto|off|C] [--temperature_length=TOKENS]

A RoPE-phase checkpoint becomes LlamaForCausalLM (Qwen2ForCausalLM with attention biases); a NoPE/DroPE one
SmolLM3ForCausalLM with every layer NoPE. QK-norm models get the official DroPE format (llama_drope) with
its modelling file: load those with trust_remote_code=True. --tokenizer copies a Hugging Face tokenizer and
its bos/eos/pad ids; by default, those of the directory launch/import_hf.py made the workdir from, else the
training corpus's (the byte-level tokenizer for a byte-level run).

A DroPE checkpoint carries the paper's softmax temperature past the context, beta(s) = 1 + c ln(s) at s x
the training context: by default the c launch/evaluate.py fitted (DIR/eval/results.json). The export then
applies it from each input's length (the DroPE format, trust_remote_code=True); --temperature_length=N folds
beta at N tokens into the query weights instead, so the stock SmolLM3 class reproduces the model at N tokens.
"""

import sys

from absl import app, flags, logging

from drope_jax.errors import ConfigError
from drope_jax.hf import export_checkpoint
from drope_jax.launch_utils import parse_flags_or_exit, word_or_number

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (holds checkpoints/).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory for the Hugging Face checkpoint.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export; default: the newest.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the exported weights.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "A Hugging Face directory whose tokenizer files and token "
                                 "ids the export carries; default: WORKDIR/hf_source if present, else the "
                                 "training corpus's.")
_TEMPERATURE = flags.DEFINE_string("temperature", "auto", "A DroPE checkpoint's softmax temperature c: 'auto' (the c "
                                   "launch/evaluate.py fitted, in WORKDIR/eval/results.json), 'off', or a number "
                                   "(the paper's: 0.412 for its from-scratch 0.5B model, 0.103 for SmolLM-360M).")
_TEMPERATURE_LENGTH = flags.DEFINE_integer("temperature_length", None, "Fold the temperature at this many tokens "
                                           "into the query weights (a stock transformers class, exact at that "
                                           "length); default: applied from the input's length at run time.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the output
    try:
        export_checkpoint(_WORKDIR.value, _OUT.value, step=_STEP.value, dtype=_DTYPE.value,
                          source_dir=_TOKENIZER.value,
                          temperature=word_or_number("temperature", _TEMPERATURE.value, ("auto", "off")),
                          temperature_length=_TEMPERATURE_LENGTH.value)
    except ConfigError as e:  # HFFormatError included
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
