"""Which kernels the Table 4 train step runs: lowers the step (no compilation) with config.model.loss_backend,
mlp_backend and norm_backend "auto" and "xla" and counts the Triton kernel calls (the loss's two, the SwiGLU's one
a layer, the residual add + RMSNorm's two a layer and one for the final norm) and shard_map boundaries in each
program.

  python bench/loss_backend_check.py      (on the GPU machine; on a CPU the kernels lower as interpreted code: 0)
"""

import jax
import numpy as np

from drope_jax.run_config import load_module
from drope_jax.train.setup import make_setup

for loss_backend, mlp_backend, norm_backend in (("auto", "auto", "auto"), ("auto", "auto", "xla"),
                                               ("auto", "xla", "xla"), ("xla", "xla", "xla")):
    config = load_module("configs/0p5b_16b.py").get_config()
    config.train.global_batch_size, config.data.seq_len = 32, 1024
    config.model.update(loss_backend=loss_backend, mlp_backend=mlp_backend, norm_backend=norm_backend)
    setup = make_setup(config)
    with jax.set_mesh(setup.mesh):
        replicated = jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())
        batch = {"tokens": jax.ShapeDtypeStruct((32, 1025), np.int32, sharding=replicated)}
        text = setup.phase_step("rope").lower(setup.abstract_state(), batch).as_text()
    triton_calls = sum("custom_call" in line and "triton" in line for line in text.splitlines())
    boundaries = text.count("SPMDFullToShardShape")
    print(f"loss {loss_backend}, mlp {mlp_backend}, norm {norm_backend}: Triton calls {triton_calls} | "
          f"shard_map boundaries {boundaries}")
