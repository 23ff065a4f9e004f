"""Convert a local Hugging Face checkpoint directory into an Orbax checkpoint (step 0 of a new workdir).

  python launch/import_hf.py --hf_dir=DIR --workdir=WORKDIR

Supported: Llama (and SmolLM, SmolLM2), Qwen2, SmolLM3, and the official DroPE format (llama_drope,
qwen2_drope). The model config comes from config.json and is printed. The workdir then seeds a run with
`--config.init_from=WORKDIR` and exports back with launch/convert_to_hf.py. A run can also read the
Hugging Face directory directly: `--config.init_from=hf:DIR`.
"""

import sys

from absl import app, flags, logging

from drope_jax.errors import ConfigError
from drope_jax.hf import import_to_workdir
from drope_jax.launch_utils import parse_flags_or_exit

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Local Hugging Face checkpoint directory.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "New workdir for the Orbax checkpoint.", required=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the output
    try:
        cfg = import_to_workdir(_HF_DIR.value, _WORKDIR.value)
    except ConfigError as e:  # HFFormatError included
        sys.exit(f"error: {e}")
    fields = ", ".join(f"{k}={v!r}" for k, v in cfg.to_dict().items())
    print(f"wrote {_WORKDIR.value}/checkpoints/0; its config.model: {fields}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
