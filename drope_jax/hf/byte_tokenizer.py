"""The byte-level tokenizer of ``drope_jax.data.tokenizer.ByteTokenizer`` (bytes 0-255 are ids 0-255, EOS 256)
as files that transformers' ``AutoTokenizer`` loads, for exports of runs trained on bytes.

It is a byte-level BPE with no merges: GPT-2's byte-to-character map turns each byte into one vocabulary
character whose id is the byte's value, and the decoder maps the characters back to bytes.
"""

from __future__ import annotations

import json

from drope_jax import paths

EOS_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters (what ``ByteLevel`` pre-tokenizers emit)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write(out) -> None:
    """tokenizer.json and tokenizer_config.json in ``out`` (a local or cloud directory)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    assert tok.token_to_id(EOS_TOKEN) == 256
    out = paths.path(out)
    (out / "tokenizer.json").write_text(tok.to_str())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
              "add_bos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": 1_000_000}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
