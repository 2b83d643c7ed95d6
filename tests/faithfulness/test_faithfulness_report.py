"""``iti faithfulness-report`` on real (tiny-model) runs: every figure recomputed here from the samples files with
introspect's formulas, the class tables and compute counted by hand, and the refusals."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from iti.faithfulness.aggregate import ReportConfig, ReportInputError, collect_rows, write_report
from iti.faithfulness.experiment import run_faithfulness

from .test_faithfulness_run import config, save_checkpoint


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    ckpt = save_checkpoint(tmp / "ckpt")
    base = dict(datasets=("rte", "babi1"), max_samples=6, cache=str(tmp / "c.sqlite"))
    run_faithfulness(config(tmp, ckpt, tasks=("classify", "answerable", "redacted"), output_dir=str(tmp / "a"), **base))
    run_faithfulness(config(tmp, ckpt, tasks=("redacted",), task_config=("e-persona-you",), output_dir=str(tmp / "b"),
                            **base))
    return ckpt, tmp / "a", tmp / "b"


def _samples(run: Path) -> dict[tuple[str, str, str], list[dict]]:
    out = {}
    for path in (run / "samples").glob("*.jsonl"):
        lines = [json.loads(x) for x in path.read_text().split("\n") if x.strip()]
        out[(lines[0]["dataset"], lines[0]["task"], lines[0]["arm"])] = lines
    return out


def test_every_figure_is_introspects_formula_on_the_samples(two_runs):
    ckpt, a, b = two_runs
    rows = collect_rows([a, b], tokens=True)
    assert [(r.dataset, r.task, r.config) for r in rows] == [
        ("rte", "classify", "default"), ("rte", "answerable", "default"), ("rte", "redacted", "default"),
        ("babi1", "classify", "default"), ("babi1", "answerable", "default"), ("babi1", "redacted", "default"),
        ("rte", "redacted", "e-persona-you"), ("babi1", "redacted", "e-persona-you")]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    samples = {**{(k, "a"): v for k, v in _samples(a).items()}, **{(k, "b"): v for k, v in _samples(b).items()}}
    for r in rows:
        got = samples[((r.dataset, r.task, r.arm), "a" if r.config == "default" else "b")]
        mismatch = sum(s["status"] == "mismatch" for s in got)
        correct = sum(s["status"] == "ok" and bool(s["correct"]) for s in got)
        both = sum(s["status"] == "ok" and bool(s["correct"]) and bool(s["faithful"]) for s in got)
        acc = correct / (len(got) - mismatch) if len(got) > mismatch else float("nan")
        assert r.accuracy[0] == pytest.approx(acc, nan_ok=True)
        if r.task != "classify":
            assert r.faithfulness is not None
            assert r.faithfulness[0] == pytest.approx(both / correct if correct else float("nan"), nan_ok=True)
        assert r.invalid[0] == pytest.approx(sum(s["status"] != "ok" for s in got) / len(got))
        assert sum(r.classes.values()) == r.n == len(got) == 6
        steps = [s[k] for s in got for k in ("classify", "explain", "reclassify") if s.get(k)]
        assert r.requests == len(steps)
        assert r.tokens == sum(len(tok(st["rendered_prompt"], add_special_tokens=False)["input_ids"])
                               + len(tok(st["response"] or "", add_special_tokens=False)["input_ids"]) for st in steps)
        assert r.classes == Counter((s["label"], s["predict"], s.get("explain_predict")) for s in got)


def test_the_report_writes_tables_latex_and_figures(two_runs, tmp_path):
    _, a, b = two_runs
    done = write_report(ReportConfig(runs=(str(a), str(b)), output_dir=str(tmp_path / "rep"), tokens=False))
    assert done["files"] == ["report.md", "report.tex", "faithfulness.png", "accuracy.png", "persona.png"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("| test | rte |") == 4 and md.count("| test | babi1 |") == 4
    assert "On an answerable row, faithfulness is introspect's introspection score" in md
    tex = (tmp_path / "rep" / "report.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2 and tex.count(r" \\") == 2 + 8 + 2
    for png in ("faithfulness.png", "accuracy.png", "persona.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 10_000


def test_what_is_not_a_finished_run_is_refused(two_runs, tmp_path):
    _, a, _ = two_runs
    with pytest.raises(ReportInputError, match="holds no summary.json"):
        collect_rows([tmp_path])
    broken = tmp_path / "broken"
    (broken / "samples").mkdir(parents=True)
    (broken / "summary.json").write_text((a / "summary.json").read_text())
    with pytest.raises(ReportInputError, match="rte_classify_plain.jsonl is missing"):
        collect_rows([broken], tokens=False)


def test_an_answer_holding_a_unicode_line_separator_is_read_whole(two_runs, tmp_path):
    import shutil

    _, a, _ = two_runs
    run = tmp_path / "run"
    shutil.copytree(a, run)
    path = run / "samples" / "rte_classify_plain.jsonl"
    rows = [json.loads(x) for x in path.read_text().split("\n") if x.strip()]
    rows[0]["classify"]["response"] = "Yes\u2028and\x85more"  # raw in the file (ensure_ascii=False), as the runner writes
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    got = [r for r in collect_rows([str(run)], tokens=False) if r.dataset == "rte" and r.task == "classify"]
    assert got and got[0].n == len(rows)
