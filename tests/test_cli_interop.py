"""``iti export`` / ``iti import`` for every format, on a tiny model saved as a local checkpoint."""
import numpy as np
import pytest

from iti import Intervention, Steering, load_features, model_layout, write_features
from iti.cli import main

from .conftest import make_intervention, make_tiny_model, tiny_tokenizer


@pytest.fixture
def saved(tmp_path):
    model = make_tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    inter = make_intervention(model, alpha=4.0)
    inter.model_name = str(tmp_path / "model")  # made for this checkpoint (the lm-eval export checks it)
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


@pytest.mark.parametrize("fmt, out", [("pyvene", "pv"), ("lm-eval", "steer.pt"), ("gguf", "baked.gguf"),
                                      ("control-vector", "cv.gguf")])
def test_a_residual_steering_exports_and_imports_as_steering(saved, fmt, out, capsys):
    tmp, _ = saved
    model = str(tmp / "model")
    g = model_layout(make_tiny_model("llama")).geometry
    rng = np.random.default_rng(5)
    steer = Steering({("resid_post", 1): rng.normal(size=g.hidden_size), ("resid_post", 2): rng.normal(size=g.hidden_size)},
                     g, model)
    steer.save(tmp / "steer")
    assert main(["export", "--format", fmt, "--model_name", model, "--intervention", str(tmp / "steer"), "--output",
                 str(tmp / out)]) == 0
    assert "resid_post at layers 1, 2" in capsys.readouterr().out
    if fmt != "control-vector":  # no head shift adds to the residual stream: the head form is refused by name
        assert main(["import", "--format", fmt, "--input", str(tmp / out), "--model_name", model, "--output", str(tmp / "heads")]) == 2
        assert "no ITI head form" in capsys.readouterr().err and not (tmp / "heads").exists()
    args = ["import", "--format", fmt, "--input", str(tmp / out), "--model_name", model, "--output", str(tmp / "back")]
    assert main(args + ([] if fmt == "control-vector" else ["--steering"])) == 0
    back = Steering.load(tmp / "back")
    want_site = "mlp_out" if fmt == "gguf" else "resid_post"  # a GGUF carries it as the MLP output bias: the same addition
    assert list(back.vectors) == [(want_site, 1), (want_site, 2)] and back.positions == "all"
    for layer in (1, 2):
        np.testing.assert_allclose(back.vectors[(want_site, layer)], steer.vectors[("resid_post", layer)], atol=1e-5)
    assert main(["export", "--format", fmt, "--model_name", model, "--intervention", str(tmp / "steer"), "--alpha", "2",
                 "--output", str(tmp / "again")]) == 2
    assert "has no alpha" in capsys.readouterr().err


def test_bake_takes_a_steering_directory(saved, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from .conftest import token_ids

    tmp, _ = saved
    model = str(tmp / "model")
    base = AutoModelForCausalLM.from_pretrained(model).eval()
    g = model_layout(base).geometry
    steer = Steering({("resid_post", 1): np.random.default_rng(2).normal(size=g.hidden_size)}, g, model)
    steer.save(tmp / "steer")
    assert main(["bake", "--model_name", model, "--intervention", str(tmp / "steer"), "--output_dir", str(tmp / "baked")]) == 0
    assert "resid_post at layer 1 baked into the biases" in capsys.readouterr().out
    baked = AutoModelForCausalLM.from_pretrained(tmp / "baked").eval()
    with torch.no_grad(), steer.applied(base, positions="all"):
        want = base(token_ids()).logits
    torch.testing.assert_close(baked(token_ids()).logits, want, rtol=0, atol=1e-5)
    assert Steering.load(tmp / "baked" / "iti_steering").fingerprint() == steer.fingerprint()


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(saved, capsys):
    tmp, _ = saved
    model = str(tmp / "model")
    assert main(["export", "--format", "pyvene", "--model_name", model, "--output", str(tmp / "pv")]) == 2
    assert "--intervention: a saved iti intervention or steering directory" in capsys.readouterr().err
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


def _import(tmp, fmt, source, capsys) -> str:
    """Run ``iti import``; it must exit 2 with one ``iti: error:`` line and save nothing. Returns the message."""
    rc = main(["import", "--format", fmt, "--input", str(source), "--model_name", str(tmp / "model"), "--output",
               str(tmp / "back")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("iti: error: ")]  # after the loading progress bars
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err and not (tmp / "back").exists(), err
    return lines[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_import_refuses_non_finite_pyvene_constants_and_gguf_biases(saved, bad, capsys):
    """NaN slips through every tolerance check (NaN > tol is False) and used to end in numpy's 'need at least one
    array to concatenate'; the file and tensor are named instead."""
    import copy

    import torch

    from iti.bake import bake
    from iti.interop.gguf_format import export_gguf

    from .conftest import make_tiny_model

    tmp, inter = saved
    model, source = str(tmp / "model"), str(tmp / "inter")
    assert main(["export", "--format", "pyvene", "--model_name", model, "--intervention", source, "--output", str(tmp / "pv")]) == 0
    first = sorted((tmp / "pv").glob("intkey_*.bin"))[0]
    state = torch.load(first, weights_only=True)
    state["source_representation"][3] = bad
    torch.save(state, first)
    assert f"{first}: its source_representation tensor holds NaN or infinite values" in _import(tmp, "pyvene", tmp / "pv", capsys)

    layer = sorted(inter.layer_shifts())[0]
    baked = bake(copy.deepcopy(make_tiny_model("llama")), inter)  # the checkpoint's weights (same seed)
    with torch.no_grad():
        baked.model.layers[layer].self_attn.o_proj.bias[5] = bad
    path = export_gguf(baked, tiny_tokenizer(), tmp / "nan_bias.gguf")
    assert f"{path}: tensor blk.{layer}.attn_output.bias holds NaN or infinite values" in _import(tmp, "gguf", path, capsys)
    weight = bake(copy.deepcopy(make_tiny_model("llama")), inter)
    with torch.no_grad():
        weight.model.layers[1].self_attn.o_proj.weight[0, 0] = bad  # NaN in a weight used to pass the same-model check
    path = export_gguf(weight, tiny_tokenizer(), tmp / "nan_weight.gguf")
    assert f"{path}: tensor blk.1.attn_output.weight holds NaN or infinite values" in _import(tmp, "gguf", path, capsys)


def test_import_refuses_malformed_pyvene_and_lm_eval_files_with_one_line(saved, capsys):
    """A file where pyvene's directory belongs (was NotADirectoryError), a non-numeric pyvene dimension or lm-eval
    steering coefficient (were raw ValueErrors from int() and float())."""
    import json

    import torch

    tmp, _ = saved
    model, source = str(tmp / "model"), str(tmp / "inter")
    assert main(["export", "--format", "pyvene", "--model_name", model, "--intervention", source, "--output", str(tmp / "pv")]) == 0
    assert main(["export", "--format", "lm-eval", "--model_name", model, "--intervention", source, "--output", str(tmp / "s.pt")]) == 0
    capsys.readouterr()

    for file in (tmp / "s.pt", tmp / "pv" / "config.json"):
        assert f"{file} is a file; a saved pyvene intervention is a directory" in _import(tmp, "pyvene", file, capsys)

    config = json.loads((tmp / "pv" / "config.json").read_text())
    for dim, shown in (("all", "'all'"), (2.5, "2.5"), (0, "0")):
        config["intervention_dimensions"] = [None] * len(config["representations"])
        config["intervention_dimensions"][1] = dim
        (tmp / "pv" / "config.json").write_text(json.dumps(config))
        assert f"its intervention dimension is {shown}, not a positive integer" in _import(tmp, "pyvene", tmp / "pv", capsys)

    steering = torch.load(tmp / "s.pt", weights_only=True)
    hook = sorted(steering)[0]
    for coef, shown in (("two", "'two'"), ([1.0, 2.0], "[1.0, 2.0]"), (None, "None")):
        steering[hook]["steering_coefficient"] = coef
        torch.save(steering, tmp / "bad.pt")
        assert f"{tmp / 'bad.pt'}: {hook}'s steering_coefficient is {shown}, not a number" in _import(tmp, "lm-eval", tmp / "bad.pt", capsys)
    steering[hook]["steering_coefficient"] = torch.tensor(2.0)  # a one-element tensor is a number lm-eval can use
    torch.save(steering, tmp / "ok.pt")
    assert main(["import", "--format", "lm-eval", "--input", str(tmp / "ok.pt"), "--model_name", model, "--output", str(tmp / "ok")]) == 0
