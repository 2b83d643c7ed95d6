"""lm-evaluation-harness steering files: lm-eval's own steered model, built around a tiny model in memory, gives the
logits of iti's runtime intervention at positions="all"; the .pt reads back as the same intervention."""
import numpy as np
import pytest
import torch

from iti.errors import OutputExistsError, SteeringFileError
from iti.interop.lm_eval_format import export_lm_eval, hookpoints, import_lm_eval, steering_config

from ..conftest import assert_same_effect, make_intervention, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids

steered = pytest.importorskip("lm_eval.models.hf_steered")

ARCHS = ["llama", "gemma3_text", "gpt2", "falcon"]


@pytest.mark.parametrize("arch", ARCHS)
def test_lm_eval_steered_model_gives_the_logits_of_iti_at_all_positions(arch, tmp_path):
    model, ids = make_tiny_model(arch), _ids("Q: What happens if you eat watermelon seeds?")
    inter = make_intervention(model, alpha=5.0)
    path = export_lm_eval(model, inter, tmp_path / "steer.pt")
    lm = steered.SteeredModel(pretrained=model, steer_path=str(path), tokenizer=tiny_tokenizer(), device="cpu", batch_size=1)
    with torch.no_grad():
        theirs = lm._model_call(ids)
        with inter.applied(model, positions="all"):
            ours = model(ids).logits
        plain = model(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    assert not torch.allclose(theirs, plain, atol=1e-2)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_pt_round_trips(arch, tmp_path):
    model, ids = make_tiny_model(arch), _ids()
    inter = make_intervention(model)
    raw = torch.load(export_lm_eval(model, inter, tmp_path / "steer.pt"), weights_only=True)
    assert set(raw) == {hookpoints(model)[l] for l in inter.layer_shifts()}
    assert all(e["action"] == "add" and e["bias"] is None and e["head_index"] is None for e in raw.values())
    back = import_lm_eval(tmp_path / "steer.pt", model)
    assert_same_effect(model, ids, inter, back)
    if arch != "gemma3_text":  # square W_o: the same heads come back
        assert back.heads == inter.heads


def test_hookpoints_are_names_inside_the_base_model():
    assert hookpoints(make_tiny_model("llama"))[2] == "layers.2.self_attn.o_proj"
    assert hookpoints(make_tiny_model("gpt2"))[0] == "h.0.attn.c_proj"


def test_the_steering_coefficient_scales_the_vector(tmp_path):
    model = make_tiny_model("llama")
    inter = make_intervention(model)
    config = steering_config(model, inter)
    for entry in config.values():
        entry["steering_vector"] = entry["steering_vector"] / 4
        entry["steering_coefficient"] = 4.0
    torch.save(config, tmp_path / "scaled.pt")
    back = import_lm_eval(tmp_path / "scaled.pt", model)
    for layer, vec in inter.layer_shifts().items():
        np.testing.assert_allclose(back.layer_shifts()[layer], vec, atol=1e-4)


def _write(tmp_path, config):
    torch.save(config, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


def test_unknown_hookpoints_clamp_and_bias_are_refused(tmp_path):
    model = make_tiny_model("llama")
    good = steering_config(model, make_intervention(model))
    hook, entry = next(iter(good.items()))
    with pytest.raises(SteeringFileError, match="hookpoint 'layers.0.mlp.up_proj' is no steering site"):
        import_lm_eval(_write(tmp_path, {"layers.0.mlp.up_proj": entry}), model)
    with pytest.raises(SteeringFileError, match="hookpoint 'model.layers.0.self_attn.o_proj'"):  # lm-eval would not find it
        import_lm_eval(_write(tmp_path, {"model." + hook: entry}), model)
    with pytest.raises(SteeringFileError, match="'clamp'"):
        import_lm_eval(_write(tmp_path, {hook: {**entry, "action": "clamp"}}), model)
    with pytest.raises(SteeringFileError, match="bias or head_index"):
        import_lm_eval(_write(tmp_path, {hook: {**entry, "head_index": 1}}), model)
    with pytest.raises(SteeringFileError, match="values"):
        import_lm_eval(_write(tmp_path, {hook: {**entry, "steering_vector": torch.ones(5)}}), model)
    with pytest.raises(SteeringFileError, match="not an lm-eval steering file"):
        import_lm_eval(_write(tmp_path, [1, 2, 3]), model)


def test_a_pickle_that_needs_code_is_not_run(tmp_path):
    model = make_tiny_model("llama")
    torch.save({"layers.0.self_attn.o_proj": {"steering_vector": np.ones(32), "action": "add"}}, tmp_path / "np.pt")
    with pytest.raises(SteeringFileError, match="cannot be read as plain tensors"):
        import_lm_eval(tmp_path / "np.pt", model)


def test_export_refuses_other_suffixes_and_existing_files(tmp_path):
    model = make_tiny_model("llama")
    inter = make_intervention(model)
    with pytest.raises(SteeringFileError, match=".pt or .pth"):
        export_lm_eval(model, inter, tmp_path / "steer.bin")
    export_lm_eval(model, inter, tmp_path / "steer.pt")
    with pytest.raises(OutputExistsError):
        export_lm_eval(model, inter, tmp_path / "steer.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["steer.pt"]
