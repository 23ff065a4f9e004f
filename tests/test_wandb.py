"""Weights & Biases, in offline mode: a run logs to W&B the numbers it writes to metrics.jsonl, and a relaunch
continues the same W&B run."""

import glob
import json
import struct

import pytest
from wandb.proto import wandb_internal_pb2

from drope_jax.errors import ConfigError
from drope_jax.run_config import make_plan
from drope_jax.train import loop

from test_train import tiny_config

BLOCK, HEADER = 32768, 7  # a .wandb file is a LevelDB-style log of Record protos: 32 KiB blocks, 7-byte headers


def records(run_file):
    data, pos, pieces = open(run_file, "rb").read(), 7, []  # 7: the ":W&B" file header
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:
            break
        pieces.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            yield record


def logged(workdir) -> tuple[dict[int, dict], set[str]]:
    """{step: {key: value}} of every offline W&B run in the workdir, and the runs' ids."""
    steps, ids = {}, set()
    for run_file in glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb")):
        for record in records(run_file):
            if record.WhichOneof("record_type") == "run":
                ids.add(record.run.run_id)
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                steps.setdefault(record.history.step.num, {}).update(items)
    return steps, ids


def test_wandb_gets_the_metrics_of_metrics_jsonl_and_a_relaunch_continues_its_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(log=dict(wandb_project="drope-test"), train=dict(stop_at_step=6))
    loop.run(config, tmp_path)
    loop.run(tiny_config(log=dict(wandb_project="drope-test")), tmp_path)  # resumes at step 7
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps, ids = logged(tmp_path)
    assert len(ids) == 1 and (tmp_path / "wandb_run_id").read_text() == ids.pop()
    assert sorted(steps) == list(range(1, 13))
    by_step = {}
    for r in jsonl:  # a step's training record, and its in-training eval record where there is one
        by_step.setdefault(r["step"], {}).update(r)
    for step, values in steps.items():
        expected = {k: v for k, v in by_step[step].items() if isinstance(v, (int, float)) and k != "step"}
        assert {k: values[k] for k in expected} == pytest.approx(expected, rel=1e-6), step
    assert {"loss", "lr", "grad_norm"} <= set(steps[12])


def test_a_wandb_project_without_wandb_installed_is_refused_by_name(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(ConfigError, match=r"wandb_project.*pip install"):
        make_plan(tiny_config(log=dict(wandb_project="p")))
