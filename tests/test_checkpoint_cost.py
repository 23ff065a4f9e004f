"""bench/checkpoint_cost.py runs (on CPU, a tiny config) and prints a median for every row and mode."""

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_checkpoint_cost_benchmark_prints_every_median(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "checkpoint_cost.py"),
                          f"--config={REPO / 'tests' / 'reliability' / 'tiny.py'}", "--rounds=1", "--warmup=0",
                          f"--dir={tmp_path}"], env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^8 x cpu \| 35,040 parameters \| train state .* \(38 arrays\)", out.stdout, re.M), out.stdout
    for row in ("save, blocking", "save, committed", "restore"):
        assert re.search(rf"^{row} +\d+\.\d+ s +\d+\.\d+ s$", out.stdout, re.M), out.stdout
    assert re.search(r"^fingerprint alone +\d+\.\d+ s$", out.stdout, re.M), out.stdout
    assert not list(tmp_path.iterdir())  # the temporary checkpoints are gone
