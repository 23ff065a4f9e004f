"""A checkpoint written before the package moved into subpackages (and before checkpoints held fingerprints)
still resumes, unverified, and the run goes on exactly as the code that wrote it went on.

``data/run_5357f6d`` is the reliability run (``tiny.py``, 8 simulated devices, ``checkpoint.keep=20``)
trained by commit 5357f6d, the last one with the flat layout, then cut back to its checkpoint at step 4;
``losses.json`` holds that commit's losses for steps 5 to 12 of the same, uninterrupted run.
"""

import json
import pathlib
import shutil

from drope_jax.train import loop

import harness

OLD_RUN = pathlib.Path(__file__).parent / "data" / "run_5357f6d"


def test_a_checkpoint_from_the_flat_layout_resumes_and_continues_the_same(tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(OLD_RUN / "workdir", workdir)
    loop.run(harness.config(checkpoint={"keep": 20}), workdir)
    said = [line for line in capsys.readouterr().out.splitlines() if "restored unverified" in line]
    assert said == [f"checkpoints in {workdir}/checkpoints without fingerprints (written before drope-jax saved "
                    "them) are restored unverified"]  # once, though its metadata and state are read several times
    expected = {int(step): loss for step, loss in json.loads((OLD_RUN / "losses.json").read_text()).items()}
    # resumed at step 5: steps 1 to 4 are logged once, by the old run (a fresh start would log them again)
    assert [r["step"] for r in harness.metric_records(workdir)] == list(range(1, 13))
    resumed = {step: loss for step, loss in harness.losses(workdir).items() if step > 4}
    for step, loss in resumed.items():
        assert abs(loss - expected[step]) <= 1e-6 * abs(expected[step]), (step, loss, expected[step])
