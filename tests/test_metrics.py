"""The metrics writer: metrics.jsonl and TensorBoard scalars, and a launch that never loads torch for them."""

import json
import os
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2


def tensorboard_scalars(folder) -> dict:
    """{(tag, step): value} from the TFRecord event files in ``folder``: each record is an 8-byte length, its
    4-byte checksum, the Event proto and its 4-byte checksum."""
    scalars = {}
    for path in folder.glob("events.out.tfevents*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                scalars[value.tag, event.step] = value.simple_value
    return scalars


def test_the_writer_logs_every_number_and_loads_tensorboardx_without_torch(tmp_path):
    program = f"""
import sys
from drope_jax.train import metrics
writer = metrics.MetricsWriter({str(tmp_path)!r})
writer.write({{"step": 1, "loss": 2.5, "lr": 0.001, "phase": "rope"}})
writer.write({{"step": 2, "loss": 2.25, "lr": 0.002, "phase": "rope"}})
writer.close()
assert "torch" not in sys.modules, "tensorboardX loaded torch"
import torch  # hidden only while tensorboardX loaded
print(torch.ones(2).sum().item())
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0 and done.stdout.strip() == "2.0", done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == [2.5, 2.25]
    assert tensorboard_scalars(tmp_path / "tensorboard") == pytest.approx(  # TensorBoard keeps float32
        {("loss", 1): 2.5, ("lr", 1): 0.001, ("loss", 2): 2.25, ("lr", 2): 0.002}, rel=1e-7)
