"""Smoke test: every benchmark runs on a few prompts and writes its JSON and table, so none can rot.

One rule for optional peers: `make test` installs every package a default test needs (the `dev` extra includes
`bench`), so every row of the smoke run must have run, ours and the peer's. A benchmark run where a peer is
missing says "skipped: <package> not installed" in that row instead of a number (tested by blocking the import).
"""
import json
import math
import sys

import pytest

from benchmarks.common import RESULTS_DIR, BenchResult, QuickResultError, Row, bench_main, skipped_row

pytestmark = pytest.mark.real


def _check_rows(data: dict) -> None:
    assert data["rows"] and data["machine"]["torch"]
    for row in data["rows"]:
        assert not row.get("skipped"), f"{data['name']}: {row['what']} was skipped ({row['skipped']}) though make test installs it"
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0, row


def test_every_benchmark_runs_quickly(tmp_path, smollm2):
    from benchmarks import run_all

    readme = tmp_path / "README.md"
    run_all.main(["--quick", "--results-dir", str(tmp_path), "--readme", str(readme)])
    for name in run_all.BENCHMARKS:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["quick"] is True
        _check_rows(data)
    parity = json.loads((tmp_path / "lm_eval_mc.json").read_text())["data"]  # --preset lm-eval == the harness
    assert parity["questions_with_different_mc1"] == 0 and parity["max_abs_mc2_diff_per_question"] < 1e-4
    hooks = json.loads((tmp_path / "hook_overhead.json").read_text())
    assert {"pyvene", "nnsight"} <= set(hooks["data"]["max_abs_diff_vs_ours"])  # both peers ran and were compared
    text = readme.read_text()
    assert "| what | ours | baseline | ratio | goal | met |" in text and "Hook overhead" in text


def test_a_missing_peer_gives_a_skipped_row_naming_it(monkeypatch, tmp_path, smollm2):
    """With pyvene and nnsight not importable, their rows say so; our own rows still run and have ratios."""
    from benchmarks import bench_hooks

    for name in [m for m in sys.modules if m.split(".")[0] in ("pyvene", "nnsight")] + ["pyvene", "nnsight"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import name` raise ImportError
    result = bench_hooks.run(quick=True)
    result.quick = True
    data = json.loads(result.save(tmp_path).read_text())
    skipped = {row["what"].split(":")[0]: row for row in data["rows"] if row.get("skipped")}
    assert set(skipped) == {"pyvene", "nnsight"}
    for package, row in skipped.items():
        assert row["ratio"] is None and row["baseline"] == row["skipped"]
        assert row["skipped"].startswith(f"skipped: {package} not installed")
    ours = [row for row in data["rows"] if not row.get("skipped")]
    assert len(ours) == 2 and all(math.isfinite(row["ratio"]) and row["ratio"] > 0 for row in ours)
    from benchmarks.common import render_readme

    text = render_readme(tmp_path, tmp_path / "README.md")
    assert "| skipped |" in text and "nan" not in text.lower()


def test_rows_refuse_a_ratio_that_is_not_a_positive_number():
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="not a positive number"):
            Row("x", "1", "2", bad, "report")
    assert skipped_row("x", "pyvene").ratio is None


def test_quick_results_never_land_in_the_committed_folder(tmp_path, capsys):
    with pytest.raises(QuickResultError):
        BenchResult("smoke", "t", "c", [Row("x", "1", "1", 1.0, "report")], quick=True).save(RESULTS_DIR)
    assert not (RESULTS_DIR / "smoke.json").exists()

    def run(quick=False):
        return BenchResult("smoke", "t", "c", [Row("x", "1", "1", 1.0, "report")])

    bench_main(run, None, ["--quick"])  # no --results-dir: a new temporary directory
    written = capsys.readouterr().out.splitlines()[0]
    assert "iti-bench-quick-" in written and not (RESULTS_DIR / "smoke.json").exists()
    assert json.loads(open(written).read())["quick"] is True


def test_committed_results_come_from_full_runs():
    """A committed result is never a smoke run (the quick intervention benchmark once sat here: 4 new tokens)."""
    files = sorted(RESULTS_DIR.glob("*.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text())
        assert data.get("quick") is not True, path
        _check_rows(data)
    generation = json.loads((RESULTS_DIR / "intervention_generation.json").read_text())
    assert generation["data"]["new_tokens"] == 64 and all(generation["data"][f"batch_{b}"]["timings_s"]["plain"]["n"] >= 3 for b in (1, 8))
