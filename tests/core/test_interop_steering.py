"""Steering values of every site through other tools' files: lm-eval's steered model and pyvene, each running its own
hooks, give the logits of iti's runtime steering at every position; the files read back as the same steering with no
solving; a baked residual steering goes through GGUF as its MLP bias; head form is refused for a site no head reaches."""
import numpy as np
import pytest
import torch

from iti import Steering, model_layout
from iti.bake import bake
from iti.errors import UnrepresentableShiftError
from iti.interop.lm_eval_format import export_lm_eval, import_lm_eval, load_lm_eval_steering
from iti.interop.pyvene_format import export_pyvene, import_pyvene, load_pyvene_steering

from ..conftest import make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids

OUTPUT_SITES = ("attn_out", "mlp_out", "resid_post")


def _steering(model, sites, seed=0, scale=1.5):
    """One random vector per site, at layers 0, 1, 2, ... in turn (written out here, not by a library helper)."""
    g = model_layout(model).geometry
    rng = np.random.default_rng(seed)
    vecs = {}
    for i, site in enumerate(sites):
        width = g.num_heads * g.head_dim if site == "head_out" else g.hidden_size
        vecs[(site, i % g.num_layers)] = rng.normal(size=width).astype(np.float32) * scale
    return Steering(vecs, g, "tiny")


def _pyvene_and_iti_tokens(pv, directory, model, ids, steering, new_tokens=6):
    """Greedy tokens of pyvene's model loaded from ``directory`` and of iti's steering at every position."""
    pv_model = pv.IntervenableModel.load(str(directory), model)
    gen = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        theirs = pv_model.generate({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, intervene_on_prompt=True, **gen)[1]
        with steering.applied(model, positions="all"):
            ours = model.generate(ids, **gen)
    return theirs, ours


def _logits(model, ids, steering=None):
    with torch.no_grad():
        if steering is None:
            return model(ids).logits
        with steering.applied(model, positions="all"):
            return model(ids).logits


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "falcon"])
def test_lm_eval_steered_model_gives_the_logits_of_a_steering_at_every_site(arch, tmp_path):
    steered = pytest.importorskip("lm_eval.models.hf_steered")
    model, ids = make_tiny_model(arch), _ids("Q: What happens if you eat watermelon seeds?")
    steer = _steering(model, OUTPUT_SITES)  # one vector per site, at layers 0, 1, 2: every hookpoint kind at once
    path = export_lm_eval(model, steer, tmp_path / "steer.pt")
    lm = steered.SteeredModel(pretrained=model, steer_path=str(path), tokenizer=tiny_tokenizer(), device="cpu", batch_size=1)
    with torch.no_grad():
        theirs = lm._model_call(ids)
    ours = _logits(model, ids, steer)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert not torch.allclose(theirs, _logits(model, ids), atol=1e-2)
    back = load_lm_eval_steering(path, model)
    assert list(back.vectors) == list(steer.vectors) and back.positions == "all"
    for key, vec in steer.vectors.items():  # read as written: no least squares for what is not a head request
        np.testing.assert_array_equal(back.vectors[key], vec)


def test_a_head_steering_goes_out_as_w_o_times_it_and_comes_back_as_heads(tmp_path):
    model, ids = make_tiny_model("llama"), _ids()
    steer = _steering(model, ["head_out", "head_out"])
    path = export_lm_eval(model, steer, tmp_path / "steer.pt")
    raw = torch.load(path, weights_only=True)
    w = model.model.layers[1].self_attn.o_proj.weight.detach()
    np.testing.assert_allclose(raw["layers.1.self_attn.o_proj"]["steering_vector"].numpy(),
                               (w @ torch.from_numpy(steer.vectors[("head_out", 1)])).numpy(), rtol=0, atol=1e-6)
    read = load_lm_eval_steering(path, model)
    assert read.sites == ["attn_out"]
    torch.testing.assert_close(_logits(model, ids, read), _logits(model, ids, steer), rtol=0, atol=1e-5)
    heads = import_lm_eval(path, model)  # the head request solves W_o s = v (square W_o: the shift itself)
    for layer in (0, 1):
        np.testing.assert_allclose(heads.layer_shifts()[layer], steer.vectors[("head_out", layer)], atol=1e-4)


def test_head_form_of_a_residual_file_is_refused_naming_the_site(tmp_path):
    model = make_tiny_model("llama")
    path = export_lm_eval(model, _steering(model, ["resid_post"]), tmp_path / "steer.pt")
    with pytest.raises(UnrepresentableShiftError, match="resid_post of layer 0.*steering value"):
        import_lm_eval(path, model)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"])
def test_pyvene_generates_what_iti_generates_for_a_steering_of_every_site(arch, tmp_path):
    pv = pytest.importorskip("pyvene")
    model, ids = make_tiny_model(arch), _ids("Q: What happens if you eat watermelon seeds?")
    steer = _steering(model, ["head_out", "attn_out", "mlp_out", "resid_post"])
    out = export_pyvene(model, steer, tmp_path / "pv")
    theirs, ours = _pyvene_and_iti_tokens(pv, out, model, ids, steer)
    assert torch.equal(theirs, ours)
    back = load_pyvene_steering(out, model)
    assert set(back.vectors) == {("attn_out", 0), ("attn_out", 1), ("mlp_out", 2), ("resid_post", 0)}
    torch.testing.assert_close(_logits(model, ids, back), _logits(model, ids, steer), rtol=0, atol=1e-5)
    with pytest.raises(UnrepresentableShiftError, match="mlp_out of layer 2"):
        import_pyvene(out, model)


def test_pyvene_abstract_components_read_as_their_sites(tmp_path):
    pv = pytest.importorskip("pyvene")
    model, ids = make_tiny_model("llama"), _ids()
    rng = np.random.default_rng(3)
    v_block, v_mlp, v_head = (rng.normal(size=n).astype(np.float32) for n in (32, 32, 32))
    config = [{"layer": 2, "component": "block_output", "intervention": pv.AdditionIntervention(source_representation=torch.from_numpy(v_block))},
              {"layer": 1, "component": "mlp_output", "intervention": pv.AdditionIntervention(source_representation=torch.from_numpy(v_mlp))},
              {"layer": 0, "component": "attention_value_output", "intervention": pv.AdditionIntervention(source_representation=torch.from_numpy(v_head))}]
    pv.IntervenableModel(config, model).save(str(tmp_path / "abstract"))
    read = load_pyvene_steering(tmp_path / "abstract", model)
    assert set(read.vectors) == {("resid_post", 2), ("mlp_out", 1), ("head_out", 0)}
    np.testing.assert_array_equal(read.vectors[("resid_post", 2)], v_block)
    theirs, ours = _pyvene_and_iti_tokens(pv, tmp_path / "abstract", model, ids, read)
    assert torch.equal(theirs, ours)


def test_a_baked_residual_steering_goes_through_gguf_as_the_mlp_bias(tmp_path):
    pytest.importorskip("gguf")
    from iti.interop.gguf_format import export_gguf, import_gguf, load_gguf_model, load_gguf_steering

    base, ids = make_tiny_model("llama"), _ids()
    steer = _steering(base, ["resid_post", "attn_out"])
    runtime = _logits(base, ids, steer)
    baked = make_tiny_model("llama")
    bake(baked, steer)
    path = export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf")
    torch.testing.assert_close(_logits(load_gguf_model(path), ids), runtime, rtol=0, atol=1e-4)
    read = load_gguf_steering(path, base)
    assert set(read.vectors) == {("mlp_out", 0), ("attn_out", 1)}
    np.testing.assert_allclose(read.vectors[("mlp_out", 0)], steer.vectors[("resid_post", 0)], atol=1e-6)
    torch.testing.assert_close(_logits(base, ids, read), runtime, rtol=0, atol=1e-4)
    with pytest.raises(UnrepresentableShiftError, match="mlp_out of layer 0"):
        import_gguf(path, base)
