"""Concept steering on a tiny model: the cached last-token re-run equals a full forward, the shift lands on the
chosen heads exactly, and the pair evaluation produces its records and summary."""
from __future__ import annotations

import numpy as np
import pytest

from iti import collect_head_activations, model_layout
from iti.concepts.bottleneck import SparseConceptBottleneck, review_prompt
from iti.concepts.cebab import EditPair, Review
from iti.concepts.steering import (
    ConceptDirections,
    LastTokenReader,
    steer_pairs,
    summarize_steering,
    zero_shot_rating_probabilities,
)

from ..conftest import make_tiny_model, tiny_tokenizer

TEXTS = ["the quick brown fox", "Q: Why do veins appear blue?", "Where did fortune cookies originate?", "jumps over the lazy dog"]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama"), tiny_tokenizer()


def test_cached_last_token_rerun_equals_a_full_forward(tiny):
    model, tok = tiny
    reader = LastTokenReader(model, tok)
    full = collect_head_activations(model, tok, [review_prompt(t) for t in TEXTS], progress=False).heads.numpy()
    for i, t in enumerate(TEXTS):
        state = reader.prefix(review_prompt(t))
        heads, probs = reader.read(state)
        again, _ = reader.read(state)  # the prefix cache is restored after each read
        np.testing.assert_allclose(heads, full[i], atol=1e-5)
        np.testing.assert_array_equal(heads, again)
        assert probs.shape == (5,) and abs(probs.sum() - 1) < 1e-5
    # the batched, left-padded zero-shot rating reads the same next-token distribution
    zero_shot = zero_shot_rating_probabilities(model, tok, [review_prompt(t) for t in TEXTS], batch_size=3, progress=False)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(zero_shot[i], reader.read(reader.prefix(review_prompt(t)))[1], atol=1e-5)


def _fitted(model, tok):
    rng = np.random.default_rng(0)
    X = collect_head_activations(model, tok, [review_prompt(t + f" {i}") for i in range(20) for t in TEXTS], progress=False).heads.numpy()
    C = rng.integers(0, 3, size=(len(X), 4))
    C[:3] = np.arange(3)[:, None]  # every class present for every aspect
    y = rng.integers(0, 5, size=len(X))
    bn = SparseConceptBottleneck(k=2).select_heads(X, C, X, C).fit(X, C, y)
    return X, C, bn


def test_the_shift_lands_on_the_selected_heads(tiny):
    model, tok = tiny
    X, C, bn = _fitted(model, tok)
    dirs = ConceptDirections.fit(X, C, bn.heads)
    reader = LastTokenReader(model, tok)
    state = reader.prefix(review_prompt(TEXTS[0]))
    base, _ = reader.read(state)
    inter = dirs.intervention(model, "food", "Positive", alpha=3.0)
    shifted, _ = reader.read(state, inter)
    first_layer = min(l for l, _ in inter.heads)
    for (l, h), d, s in zip(inter.heads, inter.directions, inter.stds):
        if l == first_layer:  # later layers also see the earlier shifts; the first one only its own
            np.testing.assert_allclose(shifted[l, h] - base[l, h], 3.0 * s * d, atol=1e-4)
    untouched = [h for h in range(model_layout(model).geometry.num_heads) if (first_layer, h) not in inter.heads]
    np.testing.assert_allclose(shifted[first_layer, untouched], base[first_layer, untouched], atol=1e-6)
    wrong = dirs.intervention(model, "food", "Positive", 3.0, "wrong_concept")
    assert wrong.heads == bn.heads["service"] and wrong.meta["aspect"] == "service"


def test_pairs_are_steered_and_summarized(tiny):
    model, tok = tiny
    X, C, bn = _fitted(model, tok)
    dirs = ConceptDirections.fit(X, C, bn.heads)
    orig = Review("1_000000", "1", True, TEXTS[0], 2, (2, 2, 2, 2))
    pairs = [EditPair(orig, Review("1_000001", "1", False, "x", 4, (1, 2, 2, 2), "food", "Positive")),
             EditPair(orig, Review("1_000002", "1", False, "y", 0, (2, 0, 2, 2), "service", "Negative"))]
    records = steer_pairs(model, tok, bn, dirs, pairs, alphas=[0.0, 5.0], progress=False)
    assert len(records) == 2 * 2 * 3 and {r["human_delta"] for r in records} == {2, -2}
    zero = [r for r in records if r["alpha"] == 0.0]
    assert all(abs(r["model_delta"]) < 1e-5 and abs(r["bottleneck_delta"]) < 1e-6 for r in zero)
    assert any(abs(r["model_delta"]) > 1e-4 for r in records if r["alpha"] == 5.0)
    rows = summarize_steering(records)
    assert len(rows) == 6 and {r["variant"] for r in rows} == {"concept", "random_direction", "wrong_concept"}
    at_zero = [r for r in rows if r["alpha"] == 0.0]
    assert all(r["model_mae"] == pytest.approx(2.0, abs=1e-4) and r["pairs"] == 2 for r in at_zero)  # |human delta| = 2
