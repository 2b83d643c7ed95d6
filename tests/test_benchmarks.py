"""Smoke test: every benchmark runs on a few prompts and writes its JSON and table, so none can rot."""
import json

import pytest

pytestmark = pytest.mark.real


def test_every_benchmark_runs_quickly(tmp_path, smollm2):
    from benchmarks import run_all

    readme = tmp_path / "README.md"
    run_all.main(["--quick", "--results-dir", str(tmp_path), "--readme", str(readme)])
    for name in run_all.BENCHMARKS:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["rows"] and data["machine"]["torch"]
        assert all(row["ratio"] > 0 for row in data["rows"])
    parity = json.loads((tmp_path / "lm_eval_mc.json").read_text())["data"]  # --preset lm-eval == the harness
    assert parity["questions_with_different_mc1"] == 0 and parity["max_abs_mc2_diff_per_question"] < 1e-4
    text = readme.read_text()
    assert "| what | ours | baseline | ratio | goal | met |" in text and "Hook overhead" in text
