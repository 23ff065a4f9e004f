"""Metrics: metrics.jsonl and TensorBoard in the workdir, Weights & Biases if asked, a progress line on
stdout, and MFU."""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time
import uuid

import jax

from drope_jax import paths
from drope_jax.model.config import ModelConfig

SYNC_SECONDS = 60  # how often a cloud workdir gets the local mirror's metrics, TensorBoard and W&B files

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device=None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


def flops_per_token(cfg: ModelConfig, seq_len: int, lm_head: bool = False) -> float:
    """PaLM's training FLOPs per token: 6 * non-embedding params + 12 * layers * d_model * seq_len; with
    ``lm_head``, also the LM head's 6 * d_model * vocab, which PaLM's count leaves out."""
    n = cfg.num_params(include_embeddings=False)
    head = 6 * cfg.d_model * cfg.vocab_size if lm_head else 0
    return 6 * n + 12 * cfg.num_layers * cfg.d_model * seq_len + head


def mfu(tokens_per_sec: float, cfg: ModelConfig, seq_len: int, num_devices: int,
        lm_head: bool = False) -> float | None:
    peak = peak_flops()
    return None if peak is None else tokens_per_sec * flops_per_token(cfg, seq_len, lm_head) / (peak * num_devices)


class MetricsWriter:
    """Appends one JSON object per logged step, and the same numbers to TensorBoard and (``log_cfg.wandb_project``)
    Weights & Biases; only process 0 writes."""

    def __init__(self, workdir, log_cfg=None, run_config: dict | None = None):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        # A cloud workdir cannot be appended to: these files grow in a local mirror, copied up every minute.
        self.mirror, self.synced = paths.Mirror(workdir, keep=("metrics.jsonl", "wandb_run_id")), time.time()
        local = self.mirror.local
        self.jsonl = open(local / "metrics.jsonl", "a", buffering=1)
        self.tb = summary_writer_class()(str(local / "tensorboard"))
        project = log_cfg.get("wandb_project", "") if log_cfg is not None else ""
        self.wandb = start_wandb(local, project, log_cfg.get("wandb_entity", ""), run_config) if project else None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for key, value in scalars.items():
            self.tb.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])
        if time.time() - self.synced > SYNC_SECONDS:
            self.tb.flush()
            self.mirror.sync()
            self.synced = time.time()

    def close(self) -> None:
        if self.enabled:
            # Closing flushes; on a full disk that fails again, and must not hide the error that stopped the run.
            with contextlib.suppress(OSError):
                self.jsonl.close()
            with contextlib.suppress(OSError):
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
            self.mirror.sync()


def summary_writer_class():
    """tensorboardX's SummaryWriter, loaded without torch. tensorboardX imports torch whenever it is installed
    (the Hugging Face bridge installs it), only to accept torch tensors, which this writer is never given; that
    import alone took 1.8 s of a launch on the 2-core machine. Unless something has loaded torch already, it
    is hidden while tensorboardX loads, and importable again after."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def start_wandb(workdir: pathlib.Path, project: str, entity: str = "", run_config: dict | None = None):
    """A W&B run in ``project``, one per workdir: a relaunch continues it (its id is kept in the workdir).
    W&B ignores steps below the newest it has, so steps repeated after a resume show once, as first logged."""
    import wandb

    id_file = workdir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    return wandb.init(project=project, entity=entity or None, id=run_id, resume="allow", name=workdir.name,
                      dir=str(workdir), config=run_config)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
