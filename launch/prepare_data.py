"""Tokenize a corpus into ArrayRecord shards for training.

  python launch/prepare_data.py --input='corpus/*.jsonl' --format=jsonl --tokenizer=path/to/tokenizer.json \
      --out=/data/my_corpus --val_fraction=0.01

Then train with --config.data.source=arrayrecord --config.data.path=/data/my_corpus.
JSONL lines without the text field are skipped and counted in metadata.json.
"""

import sys

from absl import app, flags

from drope_jax.data import prepare
from drope_jax.errors import ConfigError
from drope_jax.launch_utils import parse_flags_or_exit

_INPUT = flags.DEFINE_string("input", None, "Glob of input files (quote it; ** recurses).", required=True)
_FORMAT = flags.DEFINE_enum("format", "text", list(prepare.FORMATS), "text: one document per file; jsonl: one "
                            "per line; parquet: one per row.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL key or parquet column holding the text.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "bytes", "'bytes', a tokenizer.json, or a directory holding one.")
_EOS = flags.DEFINE_string("eos_token", None, "EOS token of a Hugging Face tokenizer, if it cannot be inferred.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_VAL = flags.DEFINE_float("val_fraction", 0.01, "Fraction of documents held out for validation.")
_SPLIT_FIELD = flags.DEFINE_string("split_field", "", "JSONL key whose value decides a record's split, so records "
                                  "sharing it are held out together (default: each line on its own).")
_WORKERS = flags.DEFINE_integer("num_workers", None, "Parallel processes (default: one per CPU).")


def main(argv):
    del argv
    try:
        meta = prepare.prepare(_INPUT.value, _FORMAT.value, _TOKENIZER.value, _OUT.value, val_fraction=_VAL.value,
                               text_field=_TEXT_FIELD.value, num_workers=_WORKERS.value, eos_token=_EOS.value,
                               split_field=_SPLIT_FIELD.value,
                               progress=lambda line: print("\r" + line, end="", flush=True))
    except ConfigError as e:
        sys.exit(f"\nerror: {e}")
    s = meta["splits"]
    print(f"\nwrote {_OUT.value}: train {s['train']['documents']:,} docs / {s['train']['tokens']:,} tokens, "
          f"val {s['val']['documents']:,} docs / {s['val']['tokens']:,} tokens; vocab {meta['vocab_size']:,}, "
          f"EOS {meta['eos_id']}, {meta['token_dtype']}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
