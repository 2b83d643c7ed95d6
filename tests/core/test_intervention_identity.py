"""An intervention is applied only to the model it was made for: `iti bake --intervention` and the lm-eval export
check the model as `iti faithfulness` does, also for a model of the same geometry (other weights, other meaning)."""
from __future__ import annotations

import pytest

from iti import Intervention
from iti.cli import main
from iti.errors import InterventionModelError
from iti.interop.lm_eval_format import export_lm_eval

from ..conftest import make_intervention, make_tiny_model, tiny_tokenizer


@pytest.fixture
def two_models(tmp_path):
    """Two tiny llamas of one geometry saved as tmp/a and tmp/b, and an intervention made for a (named as `iti
    collect` / `iti validate` record a local directory: its last component)."""
    for name, seed in (("a", 0), ("b", 1)):
        model = make_tiny_model("llama", seed=seed)
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer().save_pretrained(tmp_path / name)
    inter = make_intervention(make_tiny_model("llama"))
    inter.model_name = "a"
    inter.save(tmp_path / "iv")
    return tmp_path


def test_bake_refuses_an_intervention_made_for_another_model_of_the_same_geometry(two_models, capsys):
    tmp = two_models
    argv = ["bake", "--intervention", str(tmp / "iv"), "--output_dir", str(tmp / "out")]
    assert main([*argv, "--model_name", str(tmp / "b")]) == 2
    err = capsys.readouterr().err
    assert "was made for 'a', not for" in err and str(tmp / "b") in err
    assert not (tmp / "out").exists()
    assert main([*argv, "--model_name", str(tmp / "a")]) == 0
    assert Intervention.load(tmp / "out" / "iti_intervention").model_name == "a"


def test_lm_eval_export_refuses_an_intervention_made_for_another_model(two_models, capsys):
    tmp = two_models
    argv = ["export", "--format", "lm-eval", "--intervention", str(tmp / "iv"), "--output", str(tmp / "steer.pt")]
    assert main([*argv, "--model_name", str(tmp / "b")]) == 2
    assert "was made for 'a', not for" in capsys.readouterr().err and not (tmp / "steer.pt").exists()
    with pytest.raises(InterventionModelError, match="made for 'a'"):
        export_lm_eval(make_tiny_model("llama", seed=1), Intervention.load(tmp / "iv"), tmp / "steer.pt", model_name=tmp / "b")
    assert not (tmp / "steer.pt").exists()
    assert main([*argv, "--model_name", str(tmp / "a")]) == 0 and (tmp / "steer.pt").exists()


def test_same_model_compares_where_names_resolve(tmp_path):
    from iti.models import same_model

    (tmp_path / "runs" / "final").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    final = str(tmp_path / "runs" / "final")
    assert same_model("final", final)  # the name iti collect records for a local directory
    assert same_model(final, final) and same_model(final, tmp_path / "runs" / ".." / "runs" / "final")
    assert not same_model("final", str(tmp_path / "other")) and not same_model(final, str(tmp_path / "other"))
    assert same_model("llama2_chat_7B", "meta-llama/Llama-2-7b-chat-hf")  # a short name and its hub id
    assert same_model("Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-chat-hf")  # a hub id recorded by its name
    assert not same_model("smollm2-135m", "gemma3-270m")


def test_an_embedded_model_is_the_same_model_as_its_cached_checkpoint(tmp_path, monkeypatch):
    """A model loaded by its short name records its de-quantized cache directory (``name_or_path``); both spellings
    name one model, and another model's directory is still another model."""
    from iti.models import same_model

    monkeypatch.setenv("ITI_CACHE", str(tmp_path))
    for name in ("smollm2-135m", "gemma3-270m"):
        (tmp_path / "models" / name).mkdir(parents=True)
    cached = str(tmp_path / "models" / "smollm2-135m")
    assert same_model(cached, "smollm2-135m") and same_model("smollm2-135m", cached)
    assert not same_model(str(tmp_path / "models" / "gemma3-270m"), "smollm2-135m")
    assert not same_model(cached, "gemma3-270m")
