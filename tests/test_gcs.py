"""gs:// everywhere a path is read or written, against a GCS emulator on loopback that the test starts and
stops (``gcs_emulator.py``): the launch programs run as a user runs them, in a folder of their own, which
must never get a ``gs:`` folder (``pathlib.Path("gs://b")`` is ``gs:/b``, the bug this guards)."""

import json
import os
import random
import subprocess
import sys

import gcs_emulator
import pytest
from etils import epath

from drope_jax import paths
from drope_jax.data import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "reliability", "tiny.py")


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.GcsEmulator(bucket="bucket") as emulator:
        yield emulator


def launch(program, *flags, cwd):
    one_device = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")  # as a user runs
    env = {**os.environ, "FSSPEC_GCS_TOKEN": "anon", "XLA_FLAGS": one_device, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch", program), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{program} {' '.join(flags)}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_prepare_train_resume_evaluate_export_and_import_on_gcs(gcs, tmp_path):
    rng = random.Random(0)
    raw = epath.Path("gs://bucket/raw")
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        docs = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(200)) for _ in range(40)]
        text = "\n".join(json.dumps({"text": d}) for d in docs)
        (raw / f"part{i}.jsonl").write_text(text)
        (tmp_path / f"part{i}.jsonl").write_text(text)

    launch("prepare_data.py", "--input=gs://bucket/raw/*.jsonl", "--format=jsonl", "--tokenizer=bytes",
           "--out=gs://bucket/data", "--val_fraction=0.2", cwd=tmp_path)
    metadata = json.loads(epath.Path("gs://bucket/data/metadata.json").read_text())
    assert metadata["splits"]["train"]["documents"] + metadata["splits"]["val"]["documents"] == 120
    local = prepare.prepare(str(tmp_path / "*.jsonl"), "jsonl", "bytes", str(tmp_path / "local_data"),
                            val_fraction=0.2, num_workers=1, progress=lambda _: None)
    for split in ("train", "val"):  # documents keep their keys, so the split is the one a local copy gets
        assert {k: metadata["splits"][split][k] for k in ("documents", "tokens")} == \
            {k: local["splits"][split][k] for k in ("documents", "tokens")}

    run = [f"--config={TINY}", "--workdir=gs://bucket/run", "--config.data.source=arrayrecord",
           "--config.data.path=gs://bucket/data"]
    assert "stopped at step 6" in launch("tpu_run.py", *run, "--config.train.stop_at_step=6", cwd=tmp_path)
    assert "resumed from gs://bucket/run/checkpoints at step 6" in launch("tpu_run.py", *run, cwd=tmp_path)
    records = [json.loads(line) for line in epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert json.loads(epath.Path("gs://bucket/run/eval.json").read_text())["perplexity"]
    assert any(f.name.startswith("events.out.tfevents") for f in paths.files_under("gs://bucket/run/tensorboard"))

    launch("evaluate.py", "--workdir=gs://bucket/run", "--methods=drope,rope", "--lengths=1,2", "--tasks=ppl",
           "--ppl_sequences=2", "--batch_size=2", cwd=tmp_path)
    results = json.loads(epath.Path("gs://bucket/run/eval/results.json").read_text())
    assert set(results["ppl"]) == {"drope", "rope"}
    assert (epath.Path("gs://bucket/run/eval") / "ppl_vs_length.png").stat().length > 1000

    launch("convert_to_hf.py", "--workdir=gs://bucket/run", "--out=gs://bucket/hf", cwd=tmp_path)
    exported = json.loads(epath.Path("gs://bucket/hf/config.json").read_text())
    c = results["temperature"]["drope"]["c"]  # the export carries the fitted temperature, read from the bucket
    assert exported["architectures"] == ["DroPELlamaForCausalLM" if c else "SmolLM3ForCausalLM"]
    assert exported.get("temperature_c", 0.0) == c
    launch("import_hf.py", "--hf_dir=gs://bucket/hf", "--workdir=gs://bucket/imported", cwd=tmp_path)
    assert epath.Path("gs://bucket/imported/checkpoints/0").is_dir()

    assert not [p for p in tmp_path.rglob("gs:*")], "a gs:// path was written as a local folder"
