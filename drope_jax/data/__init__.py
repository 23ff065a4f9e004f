"""The data: tokenized shards in, packed and resumable batches out. Imports nothing of model, train or eval.

- ``prepare``: a corpus tokenized once into ArrayRecord shards with metadata.json;
- ``tokenizer``: raw bytes or a local Hugging Face ``tokenizer.json``;
- ``pipeline``: ``Corpus`` (a prepared corpus, its held-out split and haystack), the Grain training
  pipeline, and the same held-out text at every evaluated length;
- ``niah``: RULER-style needle-in-a-haystack prompts and scoring;
- ``retrieval``: generated retrieval documents mixed into training rows.
"""
