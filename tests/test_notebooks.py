"""The notebooks run top to bottom (small settings through environment variables), so they cannot rot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs():
    import nbformat

    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_where_is_truth", "03_faithfulness"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), path.name


# the quickstart in the default suite; the two longer notebooks (45 s and 66 s here) in the slow tier
PARAMS = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem != "01_quickstart" else []) for p in NOTEBOOKS]


@pytest.mark.parametrize("path", PARAMS)
def test_notebook_runs(path, tmp_path, monkeypatch, smollm2):
    import nbformat
    from nbclient import NotebookClient

    for key, value in {"ITI_NB_QUESTIONS": "20", "ITI_NB_TOKENS": "12", "ITI_NB_SAMPLES": "2", "ITI_NB_TEXTS": "4",
                       "ITI_NB_WORKDIR": str(tmp_path), "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert os.listdir(tmp_path)
