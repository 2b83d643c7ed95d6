"""The one run harness: a second writer refused at once, another run's directory refused with what differs,
--force removing the other run's outputs before anything new is written, and the experiments going through it."""
import json
import subprocess
import sys
import time

import pytest

from iti.errors import OutputExistsError, OutputLockedError
from iti.run_directory import RunDirectory

from ..conftest import REPO


def _dir(path):
    return RunDirectory(path, "test run", outputs=("summary.json", "rows/*.json"))


def test_same_settings_resume_other_settings_are_refused_with_what_differs(tmp_path):
    d = _dir(tmp_path / "out")
    with d.claimed({"model": "a", "seed": 1}):
        (tmp_path / "out" / "summary.json").write_text("{}")
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == {"model": "a", "seed": 1}
    d.check({"model": "a", "seed": 1})  # the same run: resumes
    with pytest.raises(OutputExistsError, match=r'holds a test run with other settings \(.*seed.*1.*2'):
        d.check({"model": "a", "seed": 2})
    with pytest.raises(OutputExistsError):
        with d.claimed({"model": "a", "seed": 2}):
            pass
    assert (tmp_path / "out" / "summary.json").exists()  # refused: nothing touched


def test_outputs_without_a_record_are_another_run(tmp_path):
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "r.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="unknown settings: its outputs record none"):
        _dir(tmp_path).check({"seed": 1})


def test_force_removes_the_other_runs_outputs_before_the_new_run_writes(tmp_path):
    """The measured failure: a Ctrl-C in run B left run A's summary beside B's rows. With the harness, B's claim
    removes A's outputs first; B interrupted leaves only B's own, and A run again is refused, not mixed in."""
    d = _dir(tmp_path)
    with d.claimed({"seed": 1}):
        (tmp_path / "summary.json").write_text('{"run": "A"}')
        (tmp_path / "rows").mkdir()
        (tmp_path / "rows" / "a.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with d.claimed({"seed": 2}, force=True):
            assert not (tmp_path / "summary.json").exists() and not (tmp_path / "rows" / "a.json").exists()
            (tmp_path / "rows" / "b.json").write_text("{}")
            raise KeyboardInterrupt
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == ["b.json"] and not (tmp_path / "summary.json").exists()
    assert json.loads((tmp_path / "run.json").read_text()) == {"seed": 2}
    with pytest.raises(OutputExistsError):
        d.check({"seed": 1})


_HOLD = """
import sys, time
from iti.run_directory import RunDirectory
d = RunDirectory(sys.argv[1], "test run", outputs=("summary.json",))
with d.claimed({"seed": 1}):
    (d.path / "summary.json").write_text("A")
    print("holding", flush=True)
    time.sleep(30)
"""


def test_a_second_writer_is_refused_at_once_even_with_force(tmp_path):
    """The measured failure: a concurrent `faithfulness --force` into a used directory left one run's config beside
    the other's summary. The second claim is refused while the first holds the directory, force or not."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        t = time.perf_counter()
        with pytest.raises(OutputLockedError, match="another process"):
            with _dir(tmp_path).claimed({"seed": 2}, force=True):
                pass
        assert time.perf_counter() - t < 5
        assert (tmp_path / "summary.json").read_text() == "A" and json.loads((tmp_path / "run.json").read_text()) == {"seed": 1}
    finally:
        holder.kill()
        holder.wait()


def test_concepts_refuses_a_run_with_other_settings_before_the_model_loads(tmp_path, monkeypatch):
    """The measured failure: `iti concepts` replaced an earlier run with other settings without a word."""
    from iti.concepts import experiment
    from iti.concepts.experiment import ConceptConfig, run_concepts, run_settings

    first = ConceptConfig(output_dir=str(tmp_path), seed=0, ks=(1, 4))
    with experiment.run_directory(tmp_path).claimed(run_settings(first)):
        (tmp_path / "summary.json").write_text('{"config": {}}')
    loaded = []
    monkeypatch.setattr("iti.models.load_model", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(OutputExistsError, match=r"concept run with other settings \(.*ks"):
        run_concepts(ConceptConfig(output_dir=str(tmp_path), seed=0, ks=(1, 16)))
    assert loaded == [] and (tmp_path / "summary.json").exists()


def test_faithfulness_keeps_its_record_and_reads_an_older_one(tmp_path):
    from iti.faithfulness.experiment import FaithfulnessConfig, check_output_dir, run_settings

    cfg = FaithfulnessConfig(output_dir=str(tmp_path))
    (tmp_path / "summary.json").write_text(json.dumps({"config": {**run_settings(cfg), "batch_size": 99}}))
    check_output_dir(tmp_path, cfg)  # an older run's summary with the same settings: resumes
    other = FaithfulnessConfig(output_dir=str(tmp_path), seed=cfg.seed + 1)
    with pytest.raises(OutputExistsError, match="faithfulness run with other settings"):
        check_output_dir(tmp_path, other)


def test_a_record_beside_no_output_holds_no_run_when_the_directory_says_so(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"seed": 1}))  # a run that recorded itself and stopped before a row
    RunDirectory(tmp_path, "test run", outputs=("rows/*.json",), record_needs_outputs=True).check({"seed": 2})
    with pytest.raises(OutputExistsError, match="seed"):
        _dir(tmp_path).check({"seed": 2})


def test_settings_an_older_version_did_not_record_are_named_with_the_remedy(tmp_path):
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "r.json").write_text("{}")
    (tmp_path / "run.json").write_text(json.dumps({"seed": 1}))
    with pytest.raises(OutputExistsError, match=r'older iti that did not record "compute_dtype": "float32"; .*add that to .*run.json'):
        _dir(tmp_path).check({"seed": 1, "compute_dtype": "float32"})
    with pytest.raises(OutputExistsError, match="seed 1 -> 2"):  # a recorded setting that differs is said as such
        _dir(tmp_path).check({"seed": 2, "compute_dtype": "float32"})
