"""Evaluation past the training context: every method at every length multiple.

- ``methods``: a run's weights and the encoding each method (drope, rope, pi, ntk, yarn, ...) uses;
- ``perplexity``: held-out NLL by position, batched and placed over the devices;
- ``decode``: greedy decoding with a KV cache;
- ``suite``: the whole evaluation (perplexity and NIAH) with programs compiled once per length;
- ``report``: results.json, report.md and the plots;
- ``final_table``: the perplexity table a training run ends with (eval.json).
"""
