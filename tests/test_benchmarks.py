"""Smoke test: every benchmark runs on a few prompts and writes its JSON and table, so none can rot.

One rule for optional peers: `make test` installs every package a default test needs (the `dev` extra includes
`bench`), so every row of the smoke run must have run, ours and the peer's. A benchmark run where a peer is
missing says "skipped: <package> not installed" in that row instead of a number (tested by blocking the import).
"""
import json
import math
import sys
from types import SimpleNamespace

import pytest

from benchmarks.common import RESULTS_DIR, BenchResult, QuickResultError, Row, bench_main, skipped_row

pytestmark = pytest.mark.real


def _check_rows(data: dict) -> None:
    assert data["rows"] and data["machine"]["torch"]
    for row in data["rows"]:
        assert not row.get("skipped"), f"{data['name']}: {row['what']} was skipped ({row['skipped']}) though make test installs it"
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0, row


@pytest.mark.slow  # 184 s of the default suite's 1,128 s in the clean-clone CI run: `make test-slow` and `make bench`
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


@pytest.mark.slow  # 91 s of the default suite in the clean-clone CI run: `make test-slow` (and `make gpu-check` itself)
def test_gpu_check_cpu_mode_runs_every_check(tmp_path, smollm2):
    """``make gpu-check`` without a GPU: fp32 and bf16 on the CPU, every check (a)-(e) of each, passing."""
    from benchmarks import gpu_check

    assert gpu_check.main(["--mode", "cpu", "--results-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["quick"] is True and data["data"]["mode"] == "cpu" and not data["data"]["not_run"]
    whats = [row["what"] for row in data["rows"]]
    for case in ("fp32 cpu", "bf16 cpu"):
        for check in ("(a)", "(b)", "(c)", "(d)", "(e) collection", "(e) MC", "(e) greedy", "(e) forward", "(e) pyvene", "(e) nnsight", "peak"):
            assert any(w.startswith(f"smollm2-135m {case}: {check}") for w in whats), (case, check)
    assert not [row for row in data["rows"] if row["met"] is False or row.get("error")]
    assert "| what | ours | baseline | ratio | goal | met |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_records_a_case_that_cannot_run_and_exits_non_zero(monkeypatch, tmp_path, capsys):
    """A case that fails to load (say bf16 unsupported) is a failed row with the error; the files are still written."""
    from benchmarks import gpu_check

    def no_bf16(name, case, device_map):
        raise RuntimeError(f"{case.dtype} is not supported here")

    monkeypatch.setattr(gpu_check, "reference", lambda name, sizes, gpu: (SimpleNamespace(device_map={}), SimpleNamespace(mc={})))
    monkeypatch.setattr(gpu_check, "load_case", no_bf16)
    monkeypatch.setattr(gpu_check, "cases_for", lambda name, gpu: ([gpu_check.Case("cpu", "bf16")], []))
    assert gpu_check.main(["--mode", "cpu", "--results-dir", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [(r["what"], r["met"], r["ratio"]) for r in rows] == [("smollm2-135m bf16 cpu: case runs", False, None)]
    assert "RuntimeError: bf16 is not supported here" in rows[0]["error"]
    assert "| error |" in (tmp_path / "gpu_check.md").read_text()
    assert "FAILED" in capsys.readouterr().err


def test_split_device_map_puts_half_the_layers_on_the_gpu_and_tied_embeddings_with_the_head():
    from accelerate.utils import check_device_map

    from benchmarks.gpu_check import split_device_map
    from tests.conftest import make_tiny_model

    model = make_tiny_model("llama")  # 3 layers
    model.config.tie_word_embeddings = True
    model.tie_weights()
    dm = split_device_map(model)
    check_device_map(model, dm)  # every weight placed
    assert [dm[f"model.layers.{i}"] for i in range(3)] == [0, "cpu", "cpu"]
    assert dm["lm_head"] == dm["model.embed_tokens"] == dm["model.norm"] == "cpu"


@pytest.mark.slow
def test_protocol_runs_every_stage_on_a_few_questions(tmp_path, smollm2):
    """``make protocol`` on 4 questions: both collections and the validation run as the user's commands, every stage
    is timed, and the smaller run is kept out of the committed results."""
    from benchmarks import protocol

    assert protocol.main(["--max-questions", "4", "--sample", "2", "--work-dir", str(tmp_path / "work"),
                          "--results-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "protocol.json").read_text())
    assert data["quick"] is True
    assert set(data["data"]["seconds"]) == {"collect tqa_mc2", "collect tqa_gen_end_q", "validate"}
    assert data["data"]["rows"] == {"folds": 2, "rows": 4, "generating_rows": 2}  # baseline, ITI, 2 controls; 2 answer
    parts = data["data"]["validation_parts"]
    assert parts["mc"] > 0 and parts["generation"] > 0 and parts["rest"] > 0
    assert all(isinstance(row["ratio"], float) and row["ratio"] > 0 for row in data["rows"])
