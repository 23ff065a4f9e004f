"""The science scripts in experiments/drope_small: corpus staging and the report over the committed results."""

import pathlib
import shutil
import subprocess
import sys

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
