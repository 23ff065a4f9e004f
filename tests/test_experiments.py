"""The science scripts in experiments/: corpus staging, the configs and the reports (rounds 1 to 4)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

from drope_jax.run_config import load_module

REPO = pathlib.Path(__file__).resolve().parents[1]
SCIENCE = REPO / "experiments" / "drope_small"


def test_directories_become_documents_and_skipped_or_nested_roots_are_left_out(tmp_path):
    stage = load_module(SCIENCE / "stage_corpus.py")
    root = tmp_path / "lib"
    for path, text in {"pkg/a.py": "A = 1\n", "pkg/b.md": "# doc\n", "pkg/data.bin": "x", "pkg/tests/t.py": "T\n",
                       "pkg/sub/c.py": "C = 3\n" * 50, "site-packages/other/d.py": "D\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    docs = dict(stage.directory_documents(root, max_file_bytes=10_000, doc_bytes=100, skip=("tests",),
                                          other_roots=[root / "site-packages"]))
    assert set(docs) == {str(root / "pkg"), str(root / "pkg" / "sub")}
    assert docs[str(root / "pkg")] == "# file: pkg/a.py\nA = 1\n\n# file: pkg/b.md\n# doc\n\n"
    assert docs[str(root / "pkg" / "sub")].startswith("# file: pkg/sub/c.py\nC = 3\n")


def test_report_rebuilds_the_tables_and_plots_from_the_committed_results(tmp_path):
    for round_dir in ("round1", "round2"):
        shutil.copytree(REPO / "docs" / "reproduction" / round_dir, tmp_path / round_dir)
    out = subprocess.run([sys.executable, str(SCIENCE / "report.py"), f"--data={tmp_path}"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "| rope | 4.57 | 9.70 | 25.56 | 49.31 |" in out and "| drope | 6.60 | 7.34 |" in out
    assert "| DroPE | 2.613 | 1.746 | 1.579 | 2.825 |" in out
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "training_loss.png", "in_training_ppl.png", "ppl_vs_length.png", "loss_by_position.png",
        "niah_heatmap_code.png", "niah_heatmap_ruler.png"}


ROUND3 = REPO / "experiments" / "round3"


def test_round3_arms_are_valid_runs_that_share_the_data_and_scale_for_a_smoke_test():
    from drope_jax.run_config import make_plan

    config = load_module(ROUND3 / "config.py")
    plans = {}
    for arm in (*config.ARMS, "rope@1", "drope_r25@1/48"):
        c = config.get_config(arm)
        c.branch_from = "rope" if arm.startswith("drope") else ""
        plans[arm] = make_plan(c)
        assert c.data.retrieval_share == 0.125 and c.data.seq_len == 1024
    assert [plans[a].flip_step for a in ("drope_r12", "drope_r25", "drope_r50")] == [2100, 1800, 1200]
    assert config.get_config("rope").checkpoint.keep_steps == (1200, 1800, 2100)  # every branch point kept
    assert plans["drope_r25@1/48"].total_steps == 48 and plans["drope_r25@1/48"].flip_step == 36
    assert plans["nope"].flip_step == 0 and plans["alibi"].pos.kind == "alibi" and plans["rnope_swa"].pos.window


def _results(ppl: dict, accuracy: dict) -> dict:
    """A results.json of launch/evaluate.py: {method: {length: ppl}}, {method: {length: accuracy everywhere}}."""
    depths = ["0", "0.5", "1"]
    return {"date": "2026-12-01", "device": "test", "lengths": {"1": 1024, "2": 2048, "4": 4096},
            "settings": {"niah_samples": 48, "depths": [0, 0.5, 1], "template": "code"},
            "ppl": ppl, "loss_by_position": {m: {"1": {"documents": 24}} for m in ppl},
            "niah": {m: {t: {length: {d: acc for d in depths} for length, acc in by_length.items()}
                         for t in ("passkey", "multikey", "multivalue", "multiquery")}
                     for m, by_length in accuracy.items()}}


def test_round3_gate_and_readings_from_evaluation_results(tmp_path):
    import json

    report = load_module(ROUND3 / "report.py")
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(_results({"rope": {"1": 3.0}}, {"rope": {"1": 0.85}})))
    assert report.gate(str(gate)) and not report.gate(str(gate), threshold=0.9)
    evals = {"rope": ({"rope": {"1": 3.0, "2": 9.0, "4": 30.0}, "yarn": {"1": 3.0, "2": 3.2, "4": 4.0}},
                      {"rope": {"1": 0.9, "2": 0.0, "4": 0.0}, "yarn": {"1": 0.9, "2": 0.5, "4": 0.1}}),
             "drope_r25": ({"drope": {"1": 3.05, "2": 3.3, "4": 3.9}}, {"drope": {"1": 0.8, "2": 0.7, "4": 0.4}}),
             "nope": ({"nope": {"1": 3.2, "2": 3.4, "4": 9.0}}, {"nope": {"1": 0.7, "2": 0.66, "4": 0.1}})}
    for folder, (ppl, accuracy) in evals.items():
        (tmp_path / "eval" / folder).mkdir(parents=True)
        (tmp_path / "eval" / folder / "results.json").write_text(json.dumps(_results(ppl, accuracy)))
    table, settings = report.load(tmp_path)
    assert table["DroPE 25%"]["niah"]["2"] == (34 * 12, 576)  # 0.7 of 48 prompts is 34 per cell, 12 cells
    assert set(table) == {"RoPE", "YaRN", "DroPE 25%", "NoPE"}
    found = {(number, text.split(":")[0]): verdict for number, text, verdict in report.readings(table)}
    assert found[("1", "DroPE 25% 1x perplexity 3.050 vs RoPE 3.000")] == "holds"  # +1.7%
    assert found[("2", "NIAH 2x")] == "fails" and found[("2", "NIAH 4x")] == "holds"  # 0.70 vs 0.66 overlap at n=576
    assert found[("3", "2x")] == "holds"  # 0.70 vs YaRN's 0.50
    text = report.write_report(table, settings, tmp_path / "out")
    assert "| DroPE 25% | 3.050 | 3.300 | 3.900 |" in text and (tmp_path / "out" / "round3.png").is_file()


ROUND4 = REPO / "experiments" / "round4"


def test_round4_staging_takes_every_kind_whole_once_and_groups_a_directory(tmp_path):
    import gzip
    import json

    stage = load_module(ROUND4 / "stage_corpus.py")
    lib, doc = tmp_path / "lib", tmp_path / "doc"
    files = {lib / "pkg/b.py": "A = 1\n", lib / "pkg/a.pyi": "A: int\n", lib / "pkg/x.h": "int x;\n",
             lib / "pkg/README.md": "# pkg\n", lib / "pkg/guide.rst": "Guide\n=====\n",
             lib / "pkg/c_copy.py": "A = 1\n", lib / "pkg/a_big.py": "B = 2\n" * 40, lib / "pkg/blob.bin": "x",
             lib / "pkg/wide.py": "x" * 6000 + "\n",
             lib / "pkg.dist-info/METADATA.txt": "meta\n", lib / "cuda/include/k.h": "__device__ int k;\n",
             lib / "other/notes.txt": "plain words\n"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (doc / "tool").mkdir(parents=True)
    (doc / "tool" / "changelog.Debian.gz").write_bytes(gzip.compress(b"tool (1.0) unstable; urgency=low\n"))
    report = stage.stage([lib, doc], tmp_path / "out", max_mb=1, doc_mb=100 / 2**20, files=2)
    records = [json.loads(line) for f in sorted((tmp_path / "out" / "corpus").glob("*.jsonl")) for line in f.open()]
    python = [r for r in records if r["kind"] == "python"]
    assert len(python) == 2 and {r["group"] for r in python} == {f"{lib}/pkg"}  # cut past 100 bytes, one group
    assert "".join(r["text"] for r in python).count("# file: ") == 2  # a_big.py, then b.py; c_copy.py is b.py's bytes
    assert all(r["text"].count("B = 2") in (0, 40) for r in records)  # files whole
    assert set(report["kinds"]) == {"python", "python stubs", "c/c++ header", "cuda header", "markdown",
                                    "restructuredtext", "plain text"}
    assert report["kinds"]["plain text"]["documents"] == 2  # notes.txt and the gzipped changelog, not dist-info
    assert report["left_out"] == {"files already staged (the same bytes)": 1,
                                  "files that look generated (long lines)": 1}
    capped = stage.stage([lib, doc], tmp_path / "capped", max_mb=50 / 2**20, files=1)
    assert capped["documents"] == 1 and capped["left_out"]["directories past --max_mb"] == 7


def test_round4_arms_budgets_and_recipe():
    from drope_jax.run_config import make_plan

    config = load_module(ROUND4 / "config.py")
    assert {b: round(s * config.TOKENS_PER_STEP / config.PARAMETERS, 1) for b, s in config.BUDGETS.items()} == {
        "3.6": 3.6, "14": 14.3, "24": 24.0, "34": 34.0}
    rope, tail = config.get_config("rope,budget=24"), config.get_config("drope_r12,budget=24,ratio=3.3")
    tail.branch_from = "rope"
    plan = make_plan(tail)
    assert (plan.flip_step, plan.recal.peak, plan.recal.schedule, plan.recal.floor) == (14112, 3.3e-3, "cosine", 0)
    assert rope.checkpoint.keep_steps == (12096, 14112)  # both tails' flips
    assert (rope.optim.schedule, rope.optim.b2, rope.optim.weight_decay, rope.optim.warmup_steps) == (
        "cosine", 0.95, 0.1, 524)
    assert tail.drope.reset_opt_state and make_plan(config.get_config("nope,budget=3.6")).flip_step == 0
    smoke = make_plan(config.get_config("rnope_swa,budget=14,steps=48"))
    assert smoke.total_steps == 48 and smoke.pos.window == 256
    for bad in ("drope_r12,budget=14", "rope,budget=14,ratio=2", "rope,budget=7", "rope,steps"):
        with pytest.raises(ValueError):
            config.get_config(bad)


def test_round4_readings_from_evaluation_results(tmp_path):
    import json

    report = load_module(ROUND4 / "report.py")
    lengths = ("1", "2", "4", "8")

    def arm(budget, folder, **methods):  # methods: name -> (1x ppl, 2x NIAH accuracy, c or None)
        r = _results({m: dict(zip(lengths, (p, p * 1.1, p * 2, p * 4))) for m, (p, _, _) in methods.items()},
                     {m: dict(zip(lengths, (0.9, a, a / 2, 0.0))) for m, (_, a, _) in methods.items()})
        r["lengths"]["8"] = 8192
        r["temperature"] = {m: {"c": c, "at_bound": False} for m, (_, _, c) in methods.items() if c is not None}
        (tmp_path / f"b{budget}" / "eval" / folder).mkdir(parents=True)
        (tmp_path / f"b{budget}" / "eval" / folder / "results.json").write_text(json.dumps(r))

    for budget, drope_ppl in (("3.6", 4.2), ("14", 3.4), ("24", 3.12)):
        arm(budget, "rope", rope=(3.0, 0.0, None), pi=(3.0, 0.0, None), ntk=(3.0, 0.3, None), yarn=(3.0, 0.6, None))
        arm(budget, "drope_r12", drope=(drope_ppl, 0.7, 0.35), drope_raw=(drope_ppl, 0.1, None))
        arm(budget, "drope_r25", drope=(drope_ppl - 0.05, 0.72, 0.3), drope_raw=(drope_ppl - 0.05, 0.1, None))
    arm("24", "nope", nope=(3.3, 0.66, 0.5), nope_raw=(3.3, 0.0, None))
    tables, settings = report.load(tmp_path)
    assert list(tables) == ["3.6", "14", "24"] and tables["24"]["DroPE 12.5%"]["c"] == 0.35
    found = {(n, what.split(":")[0]): v for n, what, v in report.readings(tables)}
    assert found[("1", "budget 24")] == "holds"  # +4.0%
    assert found[("2", "DroPE 12.5% 1x gap to RoPE by tokens per parameter, 3.6")] == "holds"  # +40% -> +13% -> +4%
    assert found[("3", "budget 24, NIAH 2x")] == "fails"  # 0.70 against 0.66 at 576 prompts: the intervals overlap
    verdicts = [v for n, what, v in report.readings(tables) if n == "4"]
    assert verdicts == ["holds", "holds", "holds"]  # against PI 0.00, NTK 0.30, YaRN 0.60
    assert [v for n, _, v in report.readings(tables) if n == "5"] == ["agrees"]  # 0.35 against 0.412
    text = report.write_report(tables, settings, tmp_path / "out", sweep="1.0 -> 3.5; 2.0 -> 3.4")
    assert "| DroPE 12.5%, no temperature | 3.120 |" in text and "c = 0.350" in text
    assert (tmp_path / "out" / "round4.png").is_file()
    # before the registered largest budget has run, the readings made there carry no verdict
    without_24 = {b: t for b, t in tables.items() if b != "24"}
    early = {n: v for n, _, v in report.readings(without_24) if n in ("1", "3", "4", "5")}
    assert set(early) == {"1", "3", "4", "5"}  # NoPE ran only at 24: reading 3 says so
    assert early.pop("3") == "not run" and all(v.startswith("interim") for v in early.values())
    # an arm evaluated under another protocol cannot sit in the same tables
    nope = tmp_path / "b24" / "eval" / "nope" / "results.json"
    nope.write_text(json.dumps({**json.loads(nope.read_text()), "settings": {"niah_samples": 8, "depths": [0, 1]}}))
    with pytest.raises(SystemExit, match=r"nope/results.json was evaluated with .*'niah_samples': 8"):
        report.load(tmp_path)


def test_round4_committed_results_give_the_published_verdicts():
    """docs/reproduction.md's round 4 table of readings, rebuilt from the committed evaluation results."""
    report = load_module(ROUND4 / "report.py")
    tables, _ = report.load(REPO / "docs" / "reproduction" / "round4")
    assert list(tables) == ["3.6", "14", "24"]
    found = [(n, v) for n, _, v in report.readings(tables) if v != "-"]
    assert found == [("1", "fails"), ("2", "holds"), ("3", "fails"), ("4", "holds"), ("4", "holds"),
                     ("4", "fails"), ("5", "agrees")]
    assert round(report.gap(tables["24"], report.DROPE), 3) == 0.225
    assert tables["24"]["DroPE 12.5%"]["niah"]["2"] == (382, 960)  # correct, of 960 prompts: 0.40
    assert tables["24"]["NoPE"]["niah"]["2"] == (366, 960)  # 0.38: within DroPE's interval
    assert tables["14"]["RNoPE-SWA"]["niah"]["2"] == (860, 960)  # 0.90: above YaRN's 741 at the same budget


def test_round4_poll_stops_at_once_on_a_machine_without_the_run_and_packs_a_finished_one(tmp_path):
    poll = [shutil.which("bash"), str(REPO / "experiments/round4/poll.sh"), "60"]
    root, out = tmp_path / "round4", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "SCIENCE_DIR": str(root), "OUT": str(out)}
    fresh = subprocess.run(poll, env=env, capture_output=True, text=True, timeout=30)
    assert fresh.returncode == 3 and "Start the run again" in fresh.stderr
    assert not (out / "round4.tgz").exists()
    (root / "progress.log").write_text("[00:00:00 +0s] b24: training nope\n[00:00:09 +9s] b24: run.sh exited\n")
    done = subprocess.run(poll, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "run.sh exited" in done.stdout
    assert (out / "round4.tgz").stat().st_size > 0 and (out / "progress.log").exists()
