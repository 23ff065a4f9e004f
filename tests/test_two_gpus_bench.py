"""bench/two_gpus.py's comparisons: what it calls the same losses and the same scores."""

import json
import pathlib
import time

from drope_jax.run_config import load_module

BENCH = load_module(pathlib.Path(__file__).parents[1] / "bench" / "two_gpus.py")


def _metrics(workdir: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return workdir


def test_a_resumed_runs_later_lines_replace_its_earlier_ones_and_the_gap_is_relative(tmp_path):
    reference = BENCH.losses(_metrics(tmp_path / "ref", [{"step": s, "loss": 4.0} for s in (1, 2, 3)]))
    resumed = BENCH.losses(_metrics(tmp_path / "run", [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 9.0},
                                                       {"event": "resumed"}, {"step": 2, "loss": 4.004},
                                                       {"step": 3, "loss": 4.0}]))
    gap = BENCH.loss_gap(resumed, reference)
    assert gap["at_step"] == 2 and abs(gap["max_rel_diff"] - 0.001) < 1e-9 and gap["within_bf16"]
    assert not BENCH.loss_gap({1: 4.0, 2: 4.1, 3: 4.0}, reference)["within_bf16"]  # 2.5% off at step 2


def test_score_gap_finds_the_largest_difference_of_each_kind():
    def results(ppl2, hit, c):
        return {"ppl": {"drope": {"1": 5.0, "2": ppl2}}, "temperature": {"drope": {"c": c}},
                "niah": {"drope": {"passkey": {"1": {"0": 1.0, "1": hit}}}}}

    gap = BENCH.score_gap(results(6.06, 0.75, 0.21), results(6.0, 1.0, 0.2))
    assert abs(gap["ppl_max_rel_diff"] - 0.01) < 1e-9 and gap["niah_max_abs_diff"] == 0.25
    assert abs(gap["c_max_abs_diff"] - 0.01) < 1e-9 and (gap["ppl_values"], gap["niah_cells"]) == (2, 2)


def test_a_failing_process_ends_its_peers_and_a_late_job_is_stopped(tmp_path):
    program = tmp_path / "program.py"
    program.write_text("import os, sys, time\n"
                       "if os.environ['DROPE_PROCESS_ID'] == '1':\n    sys.exit(3)\ntime.sleep(60)\n")
    start = time.time()
    assert BENCH.launch(str(program), [], 2, tmp_path / "job", True, 50, {}) == 3
    assert time.time() - start < 20  # process 0 was not waited for
    program.write_text("import time\ntime.sleep(60)\n")
    assert BENCH.launch(str(program), [], 2, tmp_path / "job", True, 2, {}) == 124
    program.write_text("print('ran')\n")
    assert BENCH.launch(str(program), [], 2, tmp_path / "job", True, 30, {}) == 0
    assert (tmp_path / "job.1.log").read_text() == "ran\n"
