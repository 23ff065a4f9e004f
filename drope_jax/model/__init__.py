"""The model: a decoder-only transformer whose position encoding is an argument, so one set of weights
runs with RoPE, NoPE or any baseline.

- ``config``: ``ModelConfig``, the one schema of model fields;
- ``transformer``: the Flax NNX modules (attention, MLP, blocks in a layer scan, KV-cache calls);
- ``attention``: causal attention on every backend (XLA, cuDNN, chunked queries, KV cache);
- ``splash``: the TPU Pallas kernel's wrapper;
- ``positions``: ``PosEncoding``: RoPE and its scalings, NoPE, ALiBi, layer patterns, windows;
- ``state``: the model as pure data (``ModelSpec``), sharded parameter init and ``apply``;
- ``loss``: next-token cross-entropy with a hand-written gradient;
- ``loss_kernels``: its two passes as Pallas (Triton) kernels, which ``loss`` runs on one GPU;
- ``mlp_kernels``: the SwiGLU with its backward as one Pallas (Triton) kernel on one GPU;
- ``norm_kernels``: the residual add and the RMSNorm after it, with its backward as one Pallas (Triton) kernel
  on one GPU.
"""
