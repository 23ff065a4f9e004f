"""The Hugging Face bridge: import checkpoints into the Flax model and export it back, with no loss.

- ``configs``: config.json <-> ModelConfig, and which architecture an export becomes;
- ``weights``: the one table of Flax parameter <-> HF tensor, safetensors reading;
- ``load``: ``init_from="hf:DIR"`` and HF directory -> Orbax workdir;
- ``export``: Orbax checkpoint or parameters -> HF directory; ``byte_tokenizer`` and ``temperature``: the
  byte-level tokenizer and the softmax temperature it carries;
- ``modeling_drope.py``: the transformers modelling file shipped in exports that need ``trust_remote_code``.

Nothing here imports torch or transformers.
"""

from drope_jax.hf.configs import HFFormatError, HFSource, model_config_from_hf, model_fields, read_source
from drope_jax.hf.export import export_checkpoint, export_params
from drope_jax.hf.load import import_to_workdir, load_params

__all__ = ["HFFormatError", "HFSource", "export_checkpoint", "export_params", "import_to_workdir", "load_params",
           "model_config_from_hf", "model_fields", "read_source"]
