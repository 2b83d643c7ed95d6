"""Direction methods and selectors as plug-ins: CAA and RepE against their original recipes written out here (not
with the library's helpers), the selectors against honest_llama's choices, and a new method in one class."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import iti
from iti import fit_intervention, fit_steering, model_layout, steering_from_contrast_pairs
from iti.errors import EmptyInputError, InvalidOptionError
from iti.methods import DirectionMethod, get_method, method_names, register_method
from iti.selectors import ExplicitUnits, Layers, RandomUnits, TopByProbeAccuracy

from ..conftest import make_tiny_model, tiny_tokenizer
from ..honest_llama_steps import random_heads

POSITIVE = ["Q: Is the sky blue? A: Yes it is", "Q: Do fish swim? A: Yes they do", "the quick fox is quick",
            "Q: Is water wet? A: Yes", "the dog is lazy and brown", "Q: Why do veins appear blue? A: Because of light",
            "Q: Where did fortune cookies originate? A: The origin is unclear", "the brown dog jumps"]
NEGATIVE = ["Q: Is the sky blue? A: No it is not", "Q: Do fish swim? A: No they do not", "the quick fox is slow",
            "Q: Is water wet? A: No", "the dog is quick and white", "Q: Why do veins appear blue? A: Because blood is blue",
            "Q: Where did fortune cookies originate? A: In China", "the lazy fox sleeps"]


def _block_outputs_last_token(model, tok, prompts, layer, blocks):
    """CAA's generate_vectors.py, written out: one prompt at a time, the decoder block's output (its first element
    when a tuple) at the prompt's last token (steering-vectors' read_token_index=-1)."""
    seen = []

    def grab(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        seen.append(hidden[0, -1].detach().double().clone())

    handle = model.get_submodule(f"{blocks}.{layer}").register_forward_hook(grab)
    try:
        with torch.no_grad():
            for p in prompts:
                model(**tok(p, return_tensors="pt"))
    finally:
        handle.remove()
    return torch.stack(seen)


@pytest.mark.parametrize("arch, blocks", [("llama", "model.layers"), ("gpt2", "transformer.h")])
def test_caa_is_the_mean_of_paired_differences_of_block_outputs(arch, blocks):
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    layer = 1
    pos = _block_outputs_last_token(model, tok, POSITIVE, layer, blocks)
    neg = _block_outputs_last_token(model, tok, NEGATIVE, layer, blocks)
    expected = (pos - neg).mean(dim=0).numpy()  # CAA: (all_pos_layer - all_neg_layer).mean(dim=0)
    steer = steering_from_contrast_pairs(model, tok, POSITIVE, NEGATIVE, method="caa", selector=Layers([layer]), alpha=1.0)
    assert list(steer.vectors) == [("resid_post", layer)] and steer.positions == "all"
    np.testing.assert_allclose(steer.vectors[("resid_post", layer)], expected, rtol=1e-4, atol=1e-5)
    # the multiplier scales the vector itself (CAA's `multiplier * vector`)
    three = steering_from_contrast_pairs(model, tok, POSITIVE, NEGATIVE, method="mean_diff", selector=Layers([layer]), alpha=3.0)
    np.testing.assert_allclose(three.vectors[("resid_post", layer)], 3 * expected, rtol=1e-4, atol=1e-5)


def _repeng_pca_diff(model, tok, layer):
    """repeng's read_representations(method="pca_diff"), written out: inputs ordered [pos, neg, pos, neg, ...],
    hidden_states[layer + 1] at each row's last non-padding token, PCA(1) of h[::2] - h[1::2], sign by the share of
    pairs whose positive side projects higher."""
    strs = [s for pair in zip(POSITIVE, NEGATIVE) for s in pair]
    tok.padding_side = "left"
    enc = tok(strs, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    mask = enc["attention_mask"]
    h = np.stack([out.hidden_states[layer + 1][i][mask[i].nonzero(as_tuple=True)[0][-1].item()].float().numpy()
                  for i in range(len(strs))])
    train = h[::2] - h[1::2]
    direction = PCA(n_components=1, whiten=False).fit(train).components_.astype(np.float32).squeeze(axis=0)
    projected = (h @ direction) / np.linalg.norm(direction)
    smaller = np.mean([projected[i] < projected[i + 1] for i in range(0, len(strs), 2)])
    larger = np.mean([projected[i] > projected[i + 1] for i in range(0, len(strs), 2)])
    return -direction if smaller > larger else direction


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_repe_is_repengs_pca_diff(arch):
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    layer = 1
    expected = _repeng_pca_diff(model, tok, layer)
    steer = steering_from_contrast_pairs(model, tok, POSITIVE, NEGATIVE, method="repe", selector=Layers([layer]), alpha=1.0)
    got = steer.vectors[("resid_post", layer)]
    np.testing.assert_allclose(np.linalg.norm(got), 1.0, rtol=1e-5)  # a unit component times the coefficient
    np.testing.assert_allclose(got, expected, atol=2e-4)
    swapped = steering_from_contrast_pairs(model, tok, NEGATIVE, POSITIVE, method="pca_diff", selector=Layers([layer]))
    np.testing.assert_allclose(swapped.vectors[("resid_post", layer)], -expected, atol=2e-4)


def test_caa_and_repe_need_pairs():
    X = np.random.default_rng(0).normal(size=(6, 2, 1, 4))
    y = np.array([1, 1, 1, 0, 0, 0])
    with pytest.raises(EmptyInputError, match="contrast pairs"):
        fit_intervention(X, y, np.arange(6), method="mean_diff", selector=[(0, 0)])  # every row its own group
    with pytest.raises(EmptyInputError, match="two pairs"):
        fit_intervention(X[[0, 3]], y[[0, 3]], np.array([0, 0]), method="pca_diff", selector=[(0, 0)])


def test_selectors_choose_as_honest_llama_does():
    g = iti.HeadGeometry(num_layers=3, num_heads=4, num_kv_heads=4, head_dim=8, hidden_size=32)
    assert RandomUnits(5).select((3, 4), None, seed=7) == random_heads(g, 5, 7)
    acc = np.arange(12, dtype=float).reshape(3, 4)
    assert TopByProbeAccuracy(3).select((3, 4), acc, 0) == [(2, 1), (2, 2), (2, 3)]
    assert Layers([2, 0]).select((3, 4), None, 0) == [(0, 0), (0, 1), (0, 2), (0, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert Layers([1]).select((3, 1), None, 0) == [(1, 0)]
    assert ExplicitUnits([2, 0]).select((3, 1), None, 0) == [(0, 0), (2, 0)]
    with pytest.raises(iti.errors.HeadIndexError, match="layers 0..2"):
        Layers([3]).select((3, 1), None, 0)


def test_a_new_method_is_one_class():
    @register_method
    class MedianDifference(DirectionMethod):
        """median(positive) - median(negative)."""

        name = "median_diff_test"

        def directions(self, data):
            y = np.asarray(data.labels)
            return np.median(data.X[y == 1], axis=0) - np.median(data.X[y == 0], axis=0)

    try:
        rng = np.random.default_rng(1)
        X = rng.normal(size=(40, 3, 32)).astype(np.float32)
        y = np.arange(40) % 2
        X[y == 1, 2] += 1.5
        g = model_layout(make_tiny_model("llama")).geometry
        steer = fit_steering(X, y, np.arange(40) // 2, site="resid_post", method="median_diff_test", selector=Layers([2]),
                             scale="raw", alpha=2.0, geometry=g)
        expected = 2.0 * (np.median(X[y == 1, 2], axis=0) - np.median(X[y == 0, 2], axis=0))
        np.testing.assert_allclose(steer.vectors[("resid_post", 2)], expected, rtol=1e-5, atol=1e-6)
        assert "median_diff_test" in method_names()
    finally:
        from iti import methods

        methods._METHODS.pop("median_diff_test", None)


def test_resid_post_fit_scales_as_the_method_says():
    """ITI's recipe at the residual stream: unit mass-mean direction x the std of the projections x alpha."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 3, 32)).astype(np.float32)
    y = np.arange(60) % 2
    X[y == 1, 1, :4] += 2.0
    g = model_layout(make_tiny_model("llama")).geometry
    steer = fit_steering(X, y, np.arange(60) // 2, site="resid_post", method="mass_mean", alpha=3.0, geometry=g)
    assert list(steer.vectors) == [("resid_post", 1)]  # the one layer whose probe separates best
    d = X[y == 1, 1].astype(np.float64).mean(0) - X[y == 0, 1].astype(np.float64).mean(0)
    d /= np.linalg.norm(d)
    np.testing.assert_allclose(steer.vectors[("resid_post", 1)], 3.0 * np.std(X[:, 1] @ d) * d, rtol=1e-4)
    with pytest.raises(InvalidOptionError, match="geometry"):
        fit_steering(X, y, site="resid_post")
    with pytest.raises(InvalidOptionError, match="mlp_out"):
        fit_steering(X, y, site="mlp_out", geometry=g)
    with pytest.raises(InvalidOptionError, match="--method"):
        get_method("nope")
