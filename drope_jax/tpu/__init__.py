"""TPU without a TPU: slice topologies from libtpu and ahead-of-time compiles that check memory.

- ``topology``: TPU generations and slices (``v5p-8``, ...) and their device meshes;
- ``aot``: compile a config's train step for a slice on this host and search grad_accum.
"""
