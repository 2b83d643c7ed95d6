"""``iti export`` / ``iti import`` for every format, on a tiny model saved as a local checkpoint."""
import numpy as np
import pytest

from iti import Intervention, load_features, model_layout, write_features
from iti.cli import main

from .conftest import make_tiny_model, tiny_tokenizer
from .core.test_intervention import make_intervention


@pytest.fixture
def saved(tmp_path):
    model = make_tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    inter = make_intervention(model, alpha=4.0)
    inter.save(tmp_path / "inter")
    return tmp_path, inter


@pytest.mark.parametrize("fmt, out", [("pyvene", "pv"), ("lm-eval", "steer.pt"), ("gguf", "baked.gguf")])
def test_export_then_import_gives_back_the_intervention(saved, fmt, out, capsys):
    tmp, inter = saved
    model, source = str(tmp / "model"), str(tmp / "inter")
    assert main(["export", "--format", fmt, "--model_name", model, "--intervention", source, "--output", str(tmp / out)]) == 0
    assert main(["import", "--format", fmt, "--input", str(tmp / out), "--model_name", model, "--output", str(tmp / "back")]) == 0
    back = Intervention.load(tmp / "back")
    assert back.heads == inter.heads
    for layer, vec in inter.layer_shifts().items():
        np.testing.assert_allclose(back.layer_shifts()[layer], vec, atol=1e-4)
    assert "[import] 3 heads in 3 layers" in capsys.readouterr().out


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(saved, capsys):
    tmp, _ = saved
    model = str(tmp / "model")
    assert main(["export", "--format", "pyvene", "--model_name", model, "--output", str(tmp / "pv")]) == 2
    assert "--intervention: a saved iti intervention directory" in capsys.readouterr().err
    other = make_tiny_model("llama", seed=3)
    other.save_pretrained(tmp / "other")
    tiny_tokenizer().save_pretrained(tmp / "other")
    assert main(["export", "--format", "gguf", "--model_name", str(tmp / "other"), "--output", str(tmp / "other.gguf"),
                 "--intervention", str(tmp / "inter")]) == 0
    assert main(["import", "--format", "gguf", "--input", str(tmp / "other.gguf"), "--model_name", model, "--output",
                 str(tmp / "back")]) == 2
    assert "GGUF of another model" in capsys.readouterr().err
    assert not (tmp / "back").exists() and not (tmp / "pv").exists()


def test_honest_llama_features_export_and_import(saved, capsys):
    from iti.truthfulqa.prompt_sets import build_prompt_set

    tmp, _ = saved
    model = make_tiny_model("llama")
    ps = build_prompt_set("tqa_mc2", max_questions=2)
    ours = write_features(model, tiny_tokenizer(), ps, tmp / "features", model_name="tiny", progress=False)
    assert main(["export", "--format", "honest-llama", "--features", str(ours), "--output", str(tmp / "hl")]) == 0
    assert (tmp / "hl" / "tiny_tqa_mc2_head_wise.npy").exists()
    assert main(["import", "--format", "honest-llama", "--input", str(tmp / "hl"), "--model_name", "tiny", "--geometry_from",
                 str(tmp / "model"), "--max_questions", "2", "--output", str(tmp / "imported")]) == 0
    back = load_features(tmp / "imported" / "tiny_tqa_mc2")
    assert np.array_equal(back.head_wise, load_features(ours).head_wise) and back.geometry == model_layout(model).geometry
    assert main(["import", "--format", "honest-llama", "--input", str(tmp / "hl"), "--model_name", "tiny", "--geometry_from",
                 str(tmp / "model"), "--max_questions", "3", "--output", str(tmp / "wrong")]) == 2
    assert "prompt set" in capsys.readouterr().err and not (tmp / "wrong").exists()
