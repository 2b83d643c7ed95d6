"""The site-general steering value: every site on every architecture against an independent derivation (a bias
written into the model's weights by hand, or the hidden states the model itself reports), arithmetic, files."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import iti
from iti import Steering, model_layout
from iti.errors import FeatureFileError, GeometryMismatchError, HeadIndexError, InvalidOptionError

from ..conftest import ARCHS, make_intervention, make_tiny_model
from ..conftest import token_ids as _ids

# Per architecture, written out here (not read from the library's site table): the linear layer whose bias is
# added right where each site sits (the attention output projection, the MLP's down projection), and whether the
# MLP output reaches the residual stream unchanged (Gemma 2 and 3 normalise it first).
OUT_PROJ = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "falcon": "self_attention.dense",
            "falcon_new": "self_attention.dense"}
DOWN_PROJ = {"gpt2": "mlp.c_proj", "gpt_neox": "mlp.dense_4h_to_h", "falcon": "mlp.dense_4h_to_h",
             "falcon_new": "mlp.dense_4h_to_h"}
POST_NORMED = {"gemma2", "gemma3_text"}


def _block(model, arch, layer):
    root = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "falcon": "transformer.h", "falcon_new": "transformer.h"}
    return model.get_submodule(f"{root.get(arch, 'model.layers')}.{layer}")


def _add_bias(linear: nn.Module, vec: torch.Tensor) -> None:
    """Add ``vec`` to a linear layer's output by its bias (created when the layer has none)."""
    if getattr(linear, "bias", None) is None:
        linear.bias = nn.Parameter(torch.zeros_like(vec))
    with torch.no_grad():
        linear.bias += vec


def _vec(width, seed, scale=2.0):
    return np.random.default_rng(seed).normal(size=width).astype(np.float32) * scale


@pytest.mark.parametrize("arch", ARCHS)
def test_every_site_equals_a_hand_written_bias_on_every_architecture(arch):
    """positions='all': attn_out = a bias on the output projection; mlp_out = a bias on the MLP's down projection;
    resid_post = the same bias where the MLP output reaches the residual unchanged; head_out = the output
    projection's bias W_o @ shift (ITI's bake formula, written out)."""
    ids = _ids()
    g = model_layout(make_tiny_model(arch)).geometry
    layer = 1
    cases = {"attn_out": OUT_PROJ.get(arch, "self_attn.o_proj"), "mlp_out": DOWN_PROJ.get(arch, "mlp.down_proj"),
             "head_out": OUT_PROJ.get(arch, "self_attn.o_proj")}
    if arch not in POST_NORMED:
        cases["resid_post"] = DOWN_PROJ.get(arch, "mlp.down_proj")
    for site, linear_path in cases.items():
        model = make_tiny_model(arch)
        width = g.head_out_size if site == "head_out" else g.hidden_size
        v = _vec(width, seed=len(site))
        steer = Steering({(site, layer): v}, g, positions="all")
        with torch.no_grad():
            base = model(ids).logits
            with steer.applied(model):
                steered = model(ids).logits
            linear = _block(model, arch, layer).get_submodule(linear_path)
            vt = torch.from_numpy(v)
            if site == "head_out":
                w = linear.weight  # GPT-2's Conv1D is [in, out], nn.Linear [out, in]
                vt = vt @ w if arch == "gpt2" else w @ vt
            _add_bias(linear, vt)
            edited = model(ids).logits
        assert not torch.allclose(steered, base, atol=1e-3), (arch, site)
        torch.testing.assert_close(steered, edited, rtol=0, atol=2e-5, msg=f"{arch} {site}")


def _next_block_input(model, arch, ids, layer):
    """The residual stream entering block ``layer`` + 1, read with a plain torch pre-hook (hidden states as the
    model reports them are recorded before user hooks run in transformers 5, so they cannot show a steered block)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = _block(model, arch, layer + 1).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(ids)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("arch", ARCHS)
def test_resid_post_moves_the_next_blocks_input_by_the_vector(arch):
    """The residual stream entering block 1 is the plain one plus the vector (all positions; the one check of
    resid_post that also holds where an MLP output is normalised before it is added, as in Gemma 2 and 3), and with
    positions='last' only the last position moves."""
    model = make_tiny_model(arch)
    g = model_layout(model).geometry
    v = _vec(g.hidden_size, 3)
    ids = _ids()
    with torch.no_grad():
        plain = _next_block_input(model, arch, ids, 0)
        with Steering({("resid_post", 0): v}, g).applied(model, positions="all"):
            every = _next_block_input(model, arch, ids, 0)
        with Steering({("resid_post", 0): v}, g).applied(model):  # default "last"
            last = _next_block_input(model, arch, ids, 0)
    torch.testing.assert_close(every, plain + torch.from_numpy(v), rtol=0, atol=1e-5)
    torch.testing.assert_close(last[:, :-1], plain[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(last[:, -1], plain[:, -1] + torch.from_numpy(v), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_an_intervention_is_its_head_out_steering(arch):
    """Intervention.applied and the Steering it converts to give the same logits under each positions policy,
    and the steering's head_out vectors are alpha x std x direction in each head's slice (written out)."""
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    steer = inter.to_steering()
    g = inter.geometry
    for (l, h), d, s in zip(inter.heads, inter.directions, inter.stds):
        np.testing.assert_allclose(steer.vectors[("head_out", l)][h * g.head_dim:(h + 1) * g.head_dim], inter.alpha * s * d, rtol=1e-6)
    ids = _ids()
    with torch.no_grad():
        for positions in ("last", "all", 2):
            with inter.applied(model, positions=positions):
                a = model(ids).logits
            with steer.applied(model, positions=positions):
                b = model(ids).logits
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_arithmetic_is_the_arithmetic_of_the_shifts():
    model = make_tiny_model("llama")
    g = model_layout(model).geometry
    a = Steering({("resid_post", 0): _vec(g.hidden_size, 1), ("head_out", 2): _vec(g.head_out_size, 2)}, g, "m", "all")
    b = Steering({("resid_post", 0): _vec(g.hidden_size, 3), ("mlp_out", 1): _vec(g.hidden_size, 4)}, g, "m", "all")
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with a.applied(model), b.applied(model):  # both at once, by nesting
            nested = model(ids).logits
        with (a + b).applied(model):
            summed = model(ids).logits
        with a.applied(model), (-a).applied(model):
            cancelled = model(ids).logits
    torch.testing.assert_close(summed, nested, rtol=0, atol=1e-5)
    torch.testing.assert_close(cancelled, base, rtol=0, atol=1e-5)
    assert sorted((a + b).vectors) == [("head_out", 2), ("mlp_out", 1), ("resid_post", 0)]
    np.testing.assert_allclose((a + b).vectors[("resid_post", 0)], a.vectors[("resid_post", 0)] + b.vectors[("resid_post", 0)], rtol=1e-6)
    assert (2 * a).fingerprint() == (a + a).fingerprint() == (a * 2.0).fingerprint()
    assert (a - b).fingerprint() == (a + (-1) * b).fingerprint() != a.fingerprint()
    assert a.with_positions("last").fingerprint() != a.fingerprint()  # the policy is part of what it does
    with pytest.raises(InvalidOptionError, match="positions"):
        a + b.with_positions("last")
    other = make_intervention(make_tiny_model("gpt2")).to_steering()
    with pytest.raises(GeometryMismatchError):
        a + other


def test_bad_values_are_refused_before_any_forward_pass():
    g = model_layout(make_tiny_model("llama")).geometry
    with pytest.raises(InvalidOptionError, match="unknown steering site 'resid_pre'"):
        Steering({("resid_pre", 0): np.zeros(g.hidden_size)}, g)
    gemma = model_layout(make_tiny_model("gemma")).geometry  # heads x head_dim (64) != hidden size (32)
    with pytest.raises(ValueError, match="must have 32 entries"):
        Steering({("resid_post", 0): np.zeros(gemma.head_out_size)}, gemma)  # head_out width at a residual site
    with pytest.raises(ValueError, match="must have 64 entries"):
        Steering({("head_out", 0): np.zeros(gemma.hidden_size)}, gemma)
    with pytest.raises(HeadIndexError, match="layers 0..2"):
        Steering({("mlp_out", 3): np.zeros(g.hidden_size)}, g)
    with pytest.raises(ValueError, match="not finite"):
        Steering({("mlp_out", 0): np.full(g.hidden_size, np.nan)}, g)
    with pytest.raises(InvalidOptionError):
        Steering({}, g)
    with pytest.raises(InvalidOptionError, match="positions"):
        Steering({("mlp_out", 0): np.zeros(g.hidden_size)}, g, positions="first")
    steer = Steering({("mlp_out", 0): np.ones(g.hidden_size)}, g)
    with pytest.raises(GeometryMismatchError, match="made for"):
        with steer.applied(make_tiny_model("gpt_neox")):  # hidden 32 but 4 heads of 8: same widths, other geometry
            pass


def test_save_load_round_trip_and_refusals(tmp_path):
    model = make_tiny_model("llama")
    g = model_layout(model).geometry
    steer = Steering({("resid_post", 1): _vec(g.hidden_size, 5), ("head_out", 0): _vec(g.head_out_size, 6)}, g,
                     "tiny-llama", 3, {"method": "test"})
    path = steer.save(tmp_path / "s")
    back = Steering.load(path, model)
    assert back.fingerprint() == steer.fingerprint() and back.positions == 3 and back.meta == {"method": "test"}
    assert list(back.vectors) == list(steer.vectors)
    for k in steer.vectors:
        np.testing.assert_array_equal(back.vectors[k], steer.vectors[k])
    ids = _ids()
    with torch.no_grad(), steer.applied(model):
        a = model(ids).logits
    with torch.no_grad(), back.applied(model):
        b = model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a record whose tensors were replaced: refused by the checksum
    record = json.loads((path / "steering.json").read_text())
    (path / "steering.safetensors").write_bytes((path / "steering.safetensors").read_bytes()[:-8])
    with pytest.raises(FeatureFileError):
        Steering.load(path)
    steer.save(path)
    record = json.loads((path / "steering.json").read_text())
    record["vectors"].append(["mlp_out", 2])  # lists a vector the file lacks
    (path / "steering.json").write_text(json.dumps(record))
    with pytest.raises(FeatureFileError, match="mlp_out.2"):
        Steering.load(path)
    with pytest.raises(FeatureFileError):
        Steering.load(tmp_path / "nothing")
    with pytest.raises(InvalidOptionError, match="per-row"):
        steer.with_positions([1, 2]).save(tmp_path / "rows")
    with pytest.raises(GeometryMismatchError):
        Steering.load(steer.save(tmp_path / "t"), make_tiny_model("gemma"))


def test_steering_in_generate_with_the_cache_equals_without():
    """positions='last' at a residual site: cached and uncached greedy decoding agree (each position shifted once)."""
    model = make_tiny_model("llama")
    g = model_layout(model).geometry
    steer = Steering({("resid_post", 1): _vec(g.hidden_size, 7, scale=4.0)}, g)
    ids = _ids()
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        with steer.applied(model):
            cached = model.generate(ids, use_cache=True, **kw)
            uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)


def test_exported_at_the_top():
    assert iti.Steering is Steering and "Steering" in iti.__all__
