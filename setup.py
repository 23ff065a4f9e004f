from setuptools import find_packages, setup

setup(
    name="drope-jax",
    version="0.1.0",
    description="DroPE in JAX/Flax: train with RoPE, drop it, recalibrate, read past the training context.",
    packages=find_packages(include=["drope_jax", "drope_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "grain>=0.2.18",
        "array_record>=0.8.6",
        "tensorstore>=0.1.86",
        "etils[epath]>=1.7",  # one path type for local and gs:// (drope_jax/paths.py)
        "gcsfs>=2025.1",  # epath's gs:// backend
        "ml-collections>=1.1.0",
        "absl-py>=2.3",
        "numpy>=2.0",
        "tensorboardX>=2.6",
        "tokenizers>=0.20",  # Hugging Face tokenizers for launch/prepare_data.py, loaded offline
        "matplotlib>=3.8",  # launch/evaluate.py's plots
        "tqdm>=4.60",  # launch/evaluate.py's progress bar
    ],
    extras_require={
        # torch pinned: this exact version installs a CPU build; an unpinned one pulls GBs of CUDA wheels
        "hf": ["torch==2.13.0", "transformers>=5.0", "safetensors"],
        # libtpu (~140 MB) compiles for TPU topologies on a CPU-only host: launch/aot_compile.py
        "tpu": ["jax[tpu]==0.10.2"],
        "parquet": ["pyarrow>=15"],  # launch/prepare_data.py --format=parquet
        # lm-evaluation-harness on exported models (docs/hf.md); pinned: its Python API moves between releases
        "eval": ["torch==2.13.0", "transformers>=5.0", "safetensors", "lm_eval[hf]==0.4.13"],
        "wandb": ["wandb>=0.31"],  # config.log.wandb_project
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=5.0", "safetensors",
                 "jax[tpu]==0.10.2", "pyarrow>=15", "ruff==0.17.6", "lm_eval[hf]==0.4.13",
                 "wandb==0.31.0",  # pinned: tests/test_wandb.py reads its offline file format
                 "gcp-storage-emulator==2026.7.19"],  # pinned: tests/gcs_emulator.py patches it
    },
)
