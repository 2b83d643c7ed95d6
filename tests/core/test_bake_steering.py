"""Baking a Steering: every site an architecture's stock class can carry as a bias equals the runtime steering at
every position, reloads with stock transformers, and the rest is refused by name before anything changes."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from iti import Steering, model_layout
from iti.bake import bake, save_baked
from iti.errors import UnsupportedArchitectureError

from ..conftest import ARCHS, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids

# Written out from the stock classes: which architectures have an MLP output bias to carry mlp_out / resid_post
# (Llama through config.mlp_bias, Falcon through config.bias, GPT-2 and GPT-NeoX always), unlike Mistral and Qwen2
# (saved as Llama without MLP biases), Gemma (no switch) and Gemma 2 and 3 (the MLP output is normalised first).
MLP_BAKEABLE = {"llama", "gpt2", "gpt_neox", "falcon", "falcon_new"}
SITES = ("head_out", "attn_out", "mlp_out", "resid_post")


def _steering(model, sites, seed=0):
    g = model_layout(model).geometry
    rng = np.random.default_rng(seed)
    vecs = {}
    for i, site in enumerate(sites):
        width = g.head_out_size if site == "head_out" else g.hidden_size
        vecs[(site, i % g.num_layers)] = rng.normal(size=width).astype(np.float32) * 1.5
    return Steering(vecs, g, "tiny")


@pytest.mark.parametrize("arch", ARCHS)
def test_baked_equals_runtime_at_all_positions_for_every_bakeable_site(arch):
    for site in SITES:
        model = make_tiny_model(arch)
        steer = _steering(model, [site])
        ids = _ids()
        if site in ("mlp_out", "resid_post") and arch not in MLP_BAKEABLE:
            before = {k: v.clone() for k, v in model.state_dict().items()}
            with pytest.raises(UnsupportedArchitectureError, match=site):
                bake(model, steer)
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not hasattr(model.config, "iti_baked")
            continue
        with torch.no_grad():
            base = model(ids).logits
            with steer.applied(model, positions="all"):
                runtime = model(ids).logits
            bake(model, steer)
            baked = model(ids).logits
        assert not torch.allclose(runtime, base, atol=1e-3), (arch, site)
        torch.testing.assert_close(baked, runtime, rtol=0, atol=1e-5, msg=f"{arch} {site}")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "falcon_new"])
def test_a_baked_steering_of_all_four_sites_reloads_with_stock_transformers(arch, tmp_path):
    model = make_tiny_model(arch)
    steer = _steering(model, SITES, seed=1)
    ids = _ids()
    with torch.no_grad():
        with steer.applied(model, positions="all"):
            runtime = model(ids).logits
    bake(model, steer)
    save_baked(model, tiny_tokenizer(), tmp_path / "baked", steer)
    assert Steering.load(tmp_path / "baked" / "iti_steering").fingerprint() == steer.fingerprint()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked").eval()
    assert reloaded.config.iti_baked == [steer.fingerprint()]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, runtime, rtol=0, atol=1e-5)
