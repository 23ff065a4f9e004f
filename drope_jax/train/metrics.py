"""Metrics: metrics.jsonl and TensorBoard in the workdir, a progress line on stdout, and MFU."""

from __future__ import annotations

import contextlib
import json
import pathlib

import jax

from drope_jax.model.config import ModelConfig

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device=None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """PaLM's training FLOPs per token: 6 * non-embedding params + 12 * layers * d_model * seq_len."""
    n = cfg.num_params(include_embeddings=False)
    return 6 * n + 12 * cfg.num_layers * cfg.d_model * seq_len


def mfu(tokens_per_sec: float, cfg: ModelConfig, seq_len: int, num_devices: int) -> float | None:
    peak = peak_flops()
    return None if peak is None else tokens_per_sec * flops_per_token(cfg, seq_len) / (peak * num_devices)


class MetricsWriter:
    """Appends one JSON object per logged step; only process 0 writes."""

    def __init__(self, workdir):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            # Closing flushes; on a full disk that fails again, and must not hide the error that stopped the run.
            with contextlib.suppress(OSError):
                self.jsonl.close()
            with contextlib.suppress(OSError):
                self.tb.close()


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
