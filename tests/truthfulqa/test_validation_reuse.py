"""A validation output directory is reused only for the settings, data, features and weights that made it; each
part of a row is stored as it finishes; the judge is checked before any row runs; one writer at a time."""
import json

import pytest

from iti.errors import OutputExistsError, OutputLockedError
from iti.truthfulqa.errors import JudgeError
from iti.truthfulqa.experiment import ValidationConfig, run_validation

from ..conftest import serve_json, write_tqa_features

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def features8(smollm2, tmp_path_factory):
    return write_tqa_features(*smollm2, tmp_path_factory.mktemp("features8"), max_questions=8)


def _cfg(features8, **kw):
    base = dict(features_dir=str(features8), ce_samples=2, generate=False, num_heads=4, alpha=5.0, max_questions=4)
    return ValidationConfig(**{**base, **kw})


def test_other_settings_are_refused_with_what_differs_and_force_recomputes(smollm2, features8, tmp_path):
    model, tok = smollm2
    out = tmp_path / "v"
    first = run_validation(model, tok, _cfg(features8), out)
    assert first["num_questions"] == 4
    with pytest.raises(OutputExistsError, match=r"max_questions 4 -> 8; pass --force|max_questions 4 -> 8\)"):
        run_validation(model, tok, _cfg(features8, max_questions=8), out)
    with pytest.raises(OutputExistsError, match=r"preset 'qa' -> 'lm-eval'"):
        run_validation(model, tok, _cfg(features8, preset="lm-eval"), out)
    again = run_validation(model, tok, _cfg(features8), out)  # same settings: every row reused
    assert json.dumps(again["rows"]) == json.dumps(first["rows"])
    (out / "run.json").rename(out / "run.json.bak")  # rows of an older iti, which kept no record: not reused either
    with pytest.raises(OutputExistsError, match="unknown settings"):
        run_validation(model, tok, _cfg(features8), out)
    (out / "run.json.bak").rename(out / "run.json")
    forced = run_validation(model, tok, _cfg(features8, preset="lm-eval", force=True), out)
    assert json.loads((out / "config.json").read_text())["preset"] == "lm-eval"
    assert json.loads((out / "run.json").read_text())["preset"] == "lm-eval"
    assert json.dumps(forced["rows"]) != json.dumps(first["rows"])  # recomputed, not the qa rows
    # the same settings from other weights: the model fingerprint differs
    from iti import load_model

    other, _ = load_model("smollm2-135m")
    with __import__("torch").no_grad():
        other.model.layers[0].self_attn.o_proj.weight.mul_(1.01)
    other.config._name_or_path = ""  # no longer the checkpoint on disk: fingerprinted by its tensors
    with pytest.raises(OutputExistsError, match="model weights: content differs"):  # features of other weights allowed
        run_validation(other, tok, _cfg(features8, preset="lm-eval", features_from_other_weights=True), out)


def test_a_second_writer_is_refused_at_once(smollm2, features8, tmp_path):
    from iti.locks import output_lock

    model, tok = smollm2
    with output_lock(tmp_path / "v"):
        with pytest.raises(OutputLockedError, match="being written by another process"):
            run_validation(model, tok, _cfg(features8), tmp_path / "v")


def test_judge_down_fails_before_any_row_and_a_failing_judge_loses_no_row(smollm2, features8, tmp_path, monkeypatch):
    model, tok = smollm2
    out = tmp_path / "v"
    monkeypatch.setenv("ITI_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ITI_JUDGE_TRUE_MODEL", "t")
    monkeypatch.setenv("ITI_JUDGE_INFO_MODEL", "i")
    cfg = _cfg(features8, generate=True, judge=True, max_new_tokens=4)
    with pytest.raises(JudgeError, match="cannot be reached"):
        run_validation(model, tok, cfg, out)
    assert not list((out / "rows").glob("*.json"))

    def refuse(body):
        return 400, {"object": "error", "message": "judge broke"}

    with serve_json(refuse) as (url, _):
        monkeypatch.setenv("ITI_JUDGE_URL", url)
        with pytest.raises(JudgeError, match="judge broke"):
            run_validation(model, tok, cfg, out)
    row = json.loads((out / "rows" / "fold0_baseline_a0_k0_s42.json").read_text())
    assert "MC1" in row and len(row["answers"]) == 2 and "True" not in row  # stored before the judge ran

    def yes(body):
        return 200, {"choices": [{"text": " yes", "logprobs": {"top_logprobs": [{" yes": -0.1, " no": -2.5}]}}]}

    with serve_json(yes) as (url, seen):
        monkeypatch.setenv("ITI_JUDGE_URL", url)
        summary = run_validation(model, tok, cfg, out)
    judged = json.loads((out / "rows" / "fold0_baseline_a0_k0_s42.json").read_text())
    assert judged["answers"] == row["answers"] and judged["MC1"] == row["MC1"] and judged["True"] == [1.0, 1.0]
    assert len(seen) == 2 * 4 * 2  # 2 rows generate (baseline, ITI) x 2 folds x 2 questions x (True, Info): only judging ran
    base = next(r for r in summary["rows"] if r["name"] == "baseline")
    assert base["True"]["mean"] == 1.0


def test_the_lock_is_released_and_removed_and_taken_again(tmp_path):
    from iti.locks import LOCK_NAME, output_lock

    with output_lock(tmp_path / "v") as d:
        assert (d / LOCK_NAME).read_text().strip().isdigit()
    assert not (tmp_path / "v" / LOCK_NAME).exists()
    with output_lock(tmp_path / "v"):
        pass
