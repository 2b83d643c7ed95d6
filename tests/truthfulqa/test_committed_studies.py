"""The studies whose rows are committed (validation/results/<study>/rows) rebuild what validation/results.md
prints: every finished row's lines (per-row and cost-matched tables, spread over seeds), recomputed here from
the stored per-question scores, must appear there verbatim. No model is needed: CI checks the published numbers."""
import subprocess
from pathlib import Path

import pytest

from iti.io import read_json
from iti.truthfulqa.config import ValidationConfig, plan_rows
from iti.truthfulqa.report import summarize, summary_markdown

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "validation" / "results"


def _committed_studies() -> list[Path]:
    """Study folders whose config and rows git tracks (not the untracked outputs of local runs)."""
    try:
        tracked = subprocess.run(["git", "ls-files", "validation/results"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted({(ROOT / p).parent for p in tracked if p.endswith("/config.json")})


def _row_lines(markdown: str) -> list[str]:
    """The body lines of every table summary.md prints (per row, and cost-matched), without headers, and its
    bullets (the spread over seeds)."""
    lines = markdown.splitlines()
    return [line for i, line in enumerate(lines) if line.startswith("- ") or (line.startswith("| ")
            and not (i + 1 < len(lines) and lines[i + 1].startswith("|---")))]


@pytest.mark.parametrize("study", _committed_studies(), ids=lambda p: p.name)
def test_committed_rows_rebuild_the_published_lines(study: Path):
    cfg = ValidationConfig(**read_json(study / "config.json", "study config"))
    rows = sorted((study / "rows").glob("*.json"))
    assert rows, f"{study.name}: config.json is committed but no rows are"
    lines = _row_lines(summary_markdown(summarize(study, plan_rows(cfg), cfg), cfg))
    assert lines, f"{study.name}: no row has both folds stored"
    published = (ROOT / "validation" / "results.md").read_text(encoding="utf-8").splitlines()
    missing = [line for line in lines if line not in published]
    assert not missing, f"{study.name}: rows not printed in validation/results.md as their rows give them:\n" + "\n".join(missing)


def test_the_committed_gemma_seed_study_is_found():
    """Guards the test above against passing on nothing: the Gemma KL 1 seed study's rows are committed."""
    assert RESULTS / "gemma3-270m_k13_kl1_seeds" in _committed_studies()
