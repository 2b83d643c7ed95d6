"""pyvene round trip: an exported intervention loads in real pyvene and generates what iti generates with
positions="all"; a saved pyvene file of constant additions imports as an intervention with the same effect."""
import json
import shutil

import numpy as np
import pytest
import torch

from iti.errors import InexpressibleExportError, OutputExistsError, PyveneInterventionError, UnrepresentableShiftError
from iti.interop.pyvene_format import export_pyvene, import_pyvene, pyvene_component, representation_keys
from iti.interop.shifts import output_shifts

from ..conftest import assert_same_effect, make_intervention, make_tiny_model
from ..conftest import token_ids as _ids

pv = pytest.importorskip("pyvene")

PYVENE_ARCHS = ["llama", "mistral", "qwen2", "gemma", "gemma2", "gpt2", "gpt_neox"]
GEN = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def _pyvene_tokens(directory, model, ids):
    pv_model = pv.IntervenableModel.load(str(directory), model)
    with torch.no_grad():
        return pv_model.generate({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, intervene_on_prompt=True, **GEN)[1]


@pytest.mark.parametrize("arch", PYVENE_ARCHS)
def test_exported_pyvene_generates_what_iti_generates_at_all_positions(arch, tmp_path):
    model, ids = make_tiny_model(arch), _ids("Q: What happens if you eat watermelon seeds?")
    inter = make_intervention(model, alpha=5.0)
    out = export_pyvene(model, inter, tmp_path / "pv")
    theirs = _pyvene_tokens(out, model, ids)
    with torch.no_grad(), inter.applied(model, positions="all"):
        ours = model.generate(ids, **GEN)
    assert torch.equal(theirs, ours)
    config = json.loads((out / "config.json").read_text())
    assert len(config["representations"]) == len(inter.layer_shifts())
    assert config["representations"][0][1].endswith(".output")


@pytest.mark.parametrize("arch", PYVENE_ARCHS)
def test_import_gives_back_an_intervention_with_the_same_effect(arch, tmp_path):
    model, ids = make_tiny_model(arch), _ids()
    inter = make_intervention(model, alpha=5.0)
    back = import_pyvene(export_pyvene(model, inter, tmp_path / "pv"), model)
    assert_same_effect(model, ids, inter, back)
    assert back.meta["imported_from"] == "pyvene" and back.meta["max_reconstruction_error"] < 1e-5
    if arch not in ("gemma", "gemma2"):  # a square W_o gives back the very heads and shifts
        assert back.heads == inter.heads
        for layer, vec in inter.layer_shifts().items():
            np.testing.assert_allclose(back.layer_shifts()[layer], vec, atol=1e-4)


def test_old_and_new_key_spellings_import_alike(tmp_path):
    model = make_tiny_model("llama")
    inter = make_intervention(model)
    new = export_pyvene(model, inter, tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(new, old)
    config = json.loads((old / "config.json").read_text())
    for key, rep in zip(config["sorted_keys"], config["representations"]):
        old_key = representation_keys(rep[1])[1]
        (old / f"intkey_{key}.bin").rename(old / f"intkey_{old_key}.bin")
    del config["sorted_keys"]  # early pyvene files name their keys only in the file names
    (old / "config.json").write_text(json.dumps(config))
    a, b = import_pyvene(new, model), import_pyvene(old, model)
    assert a.heads == b.heads and np.array_equal(a.directions, b.directions)


def test_a_pyvene_file_saved_by_pyvene_itself_imports(tmp_path):
    """Built and saved with pyvene's own API (an AdditionIntervention on an o_proj input and one on an output)."""
    model = make_tiny_model("llama")
    inter = make_intervention(model, heads=((1, 2),))
    shifts = {l: torch.from_numpy(v) for l, v in inter.layer_shifts().items()}
    out_vec = torch.from_numpy(output_shifts(model, make_intervention(model, heads=((2, 0),)))[2])
    config = [{"component": pyvene_component("model.layers.1.self_attn.o_proj", "input"),
               "intervention": pv.AdditionIntervention(source_representation=shifts[1])},
              {"component": pyvene_component("model.layers.2.self_attn.o_proj"),
               "intervention": pv.AdditionIntervention(source_representation=out_vec)}]
    pv.IntervenableModel(config, model).save(str(tmp_path / "saved"))
    back = import_pyvene(tmp_path / "saved", model)
    assert back.heads == [(1, 2), (2, 0)]
    np.testing.assert_allclose(back.layer_shifts()[1], inter.layer_shifts()[1], atol=1e-5)


def test_trainable_and_rotation_interventions_are_refused(tmp_path):
    model = make_tiny_model("llama")
    config = pv.IntervenableConfig([{"layer": 0, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}])
    pv.IntervenableModel(config, model).save(str(tmp_path / "rot"))
    with pytest.raises(PyveneInterventionError, match="trainable or rotation"):
        import_pyvene(tmp_path / "rot", model)
    config = pv.IntervenableConfig([{"component": "model.layers[0].self_attn.o_proj.output",
                                     "intervention_type": pv.AdditionIntervention}])
    pv.IntervenableModel(config, model).save(str(tmp_path / "runtime"))
    with pytest.raises(PyveneInterventionError, match="at run time"):
        import_pyvene(tmp_path / "runtime", model)
    config = pv.IntervenableConfig([{"component": "model.layers[0].self_attn.o_proj.output",
                                     "intervention_type": pv.VanillaIntervention}])
    pv.IntervenableModel(config, model).save(str(tmp_path / "swap"))
    with pytest.raises(PyveneInterventionError, match="not a constant addition"):
        import_pyvene(tmp_path / "swap", model)


def test_a_component_that_is_no_steering_site_is_refused(tmp_path):
    model = make_tiny_model("llama")
    config = [{"component": "model.layers[0].mlp.up_proj.output", "intervention": pv.AdditionIntervention(source_representation=torch.ones(64))}]
    pv.IntervenableModel(config, model).save(str(tmp_path / "up"))
    with pytest.raises(PyveneInterventionError, match="no steering site"):
        import_pyvene(tmp_path / "up", model)


def test_an_output_vector_outside_the_range_of_w_o_is_refused(tmp_path):
    model = make_tiny_model("llama")
    out = export_pyvene(model, make_intervention(model), tmp_path / "pv")
    w = model.model.layers[0].self_attn.o_proj.weight
    with torch.no_grad():  # a rank-deficient W_o: half the output space is out of reach
        w[:, 16:] = 0
        w[16:, :] = 0
    with pytest.raises(UnrepresentableShiftError, match="layer 0"):
        import_pyvene(out, model)


def test_an_architecture_pyvene_cannot_load_is_refused_before_writing(tmp_path):
    model = make_tiny_model("falcon")
    with pytest.raises(InexpressibleExportError, match="pyvene cannot load"):
        export_pyvene(model, make_intervention(model), tmp_path / "pv")
    assert not (tmp_path / "pv").exists() and not list(tmp_path.iterdir())


def test_an_existing_output_is_refused_unless_forced(tmp_path):
    model = make_tiny_model("llama")
    inter = make_intervention(model)
    export_pyvene(model, inter, tmp_path / "pv")
    with pytest.raises(OutputExistsError):
        export_pyvene(model, inter, tmp_path / "pv")
    export_pyvene(model, inter * 2, tmp_path / "pv", force=True)
    assert import_pyvene(tmp_path / "pv", model).alpha == pytest.approx(1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["pv"]


@pytest.mark.real
def test_smollm2_pyvene_round_trip_generates_the_same_tokens(smollm2, tmp_path):
    from benchmarks.bench_intervention_generation import seeded_intervention

    model, tok = smollm2
    inter = seeded_intervention(model, num_heads=16, alpha=3.0)
    out = export_pyvene(model, inter, tmp_path / "pv")
    for prompt in ["Q: What happens if you crack your knuckles a lot?\nA:", "Q: Where did fortune cookies originate?\nA:"]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        theirs = _pyvene_tokens(out, model, ids)
        with torch.no_grad(), inter.applied(model, positions="all"):
            ours = model.generate(ids, **{**GEN, "pad_token_id": tok.pad_token_id})
        with torch.no_grad():
            plain = model.generate(ids, **{**GEN, "pad_token_id": tok.pad_token_id})
        assert torch.equal(theirs, ours)
        assert not torch.equal(ours, plain)  # the shift changes what the model says
    back = import_pyvene(out, model, model_name="smollm2-135m")
    assert back.heads == inter.heads
