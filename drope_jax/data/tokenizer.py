"""Tokenizers for data preparation: raw bytes, or a local Hugging Face ``tokenizer.json`` (offline)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from drope_jax.errors import ConfigError

# Names that tokenizers commonly give their end-of-document token, most specific first.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class ByteTokenizer:
    """Bytes 0-255 are tokens 0-255; EOS is 256."""

    name = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers`` tokenizer loaded from a local file; no BOS is added (the official recipe)."""

    def __init__(self, path: str, eos_token: str | None = None):
        import tokenizers

        p = pathlib.Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise ConfigError(f"--tokenizer={path}: no tokenizer.json there; give 'bytes', a tokenizer.json, "
                              "or a directory that holds one")
        self.name = str(file.resolve())
        self.source_dir = file.parent
        self._tok = tokenizers.Tokenizer.from_file(str(file))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos_token = eos_token or _eos_from_config(file.parent) or next(
            (t for t in EOS_CANDIDATES if self._tok.token_to_id(t) is not None), None)
        if eos_token is None or self._tok.token_to_id(eos_token) is None:
            raise ConfigError(f"cannot find the EOS token of {file}; pass --eos_token=TOKEN")
        self.eos_token, self.eos_id = eos_token, self._tok.token_to_id(eos_token)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _eos_from_config(directory: pathlib.Path) -> str | None:
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    eos = json.loads(config.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def load_tokenizer(spec: str, eos_token: str | None = None):
    return ByteTokenizer() if spec == "bytes" else HFTokenizer(spec, eos_token)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
