"""The sparse concept bottleneck on features with known structure: each aspect's signal is planted in one head, so
the head selection, the concept probes, the label head and the oracle correction each have a right answer."""
from __future__ import annotations

import numpy as np
import pytest

from iti.concepts.bottleneck import (
    SparseConceptBottleneck,
    head_concept_accuracy,
    oracle_correction,
    review_prompt,
    task_and_concept_metrics,
)
from iti.concepts.cebab import ASPECTS

PLANTED = {"food": (0, 1), "service": (1, 3), "ambiance": (2, 0), "noise": (2, 2)}


def planted(n: int, seed: int, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    concepts = rng.integers(0, 3, size=(n, 4))
    X = rng.normal(size=(n, 3, 4, 8)).astype(np.float32)
    means = np.random.default_rng(99).normal(size=(4, 3, 8)) * 1.5
    for j, a in enumerate(ASPECTS):
        l, h = PLANTED[a]
        X[:, l, h] = X[:, l, h] * noise + means[j, concepts[:, j]]
    # rating: 2 (3 stars) moved up by positive aspects and down by negative ones, clipped to 0..4
    score = (concepts == 1).sum(1) - (concepts == 0).sum(1)
    ratings = np.clip(2 + score, 0, 4)
    return X, concepts, ratings


def test_each_aspect_finds_its_planted_head():
    X, C, _ = planted(400, 0)
    Xv, Cv, _ = planted(200, 1)
    for j, a in enumerate(ASPECTS):
        acc = head_concept_accuracy(X, C[:, j], Xv, Cv[:, j])
        assert acc.shape == (3, 4) and np.unravel_index(acc.argmax(), acc.shape) == PLANTED[a]
        assert acc.max() > 0.8 and np.median(acc) < 0.5


def test_bottleneck_metrics_and_oracle_correction():
    X, C, y = planted(600, 0)
    Xv, Cv, _ = planted(200, 1)
    Xt, Ct, yt = planted(300, 2, noise=2.5)  # noisier test: concept errors for the oracle to fix
    model = SparseConceptBottleneck(k=1).select_heads(X, C, Xv, Cv).fit(X, C, y)
    assert model.heads == {a: [PLANTED[a]] for a in ASPECTS}
    m = task_and_concept_metrics(model.predict(Xt), yt, model.predict_concepts(Xt), Ct)
    assert 0.5 < m["concept_accuracy"] < 0.99 and m["task_accuracy"] > 0.3
    fixed = oracle_correction(model, Xt, Ct)
    assert (fixed == yt).mean() > m["task_accuracy"] + 0.1  # gold concepts -> the label head's rule
    assert model.expected_rating(Xt).min() >= 1 and model.expected_rating(Xt).max() <= 5
    with pytest.raises(ValueError, match="select_heads first"):
        SparseConceptBottleneck().fit(X, C, y)


def test_review_prompt():
    assert review_prompt(" Great food. ") == "Review: Great food.\nRating (1-5):"


def test_group_lasso_switches_off_every_head_but_the_planted_one():
    from iti.concepts.group_lasso import GroupLassoHeads

    X, C, _ = planted(400, 0)
    for j, a in enumerate(ASPECTS):
        strong = GroupLassoHeads(0.5).fit(X, C[:, j])
        assert strong.heads() == [PLANTED[a]] and strong.head_norms_.shape == (3, 4)
        weak = GroupLassoHeads(0.01).fit(X, C[:, j])
        assert weak.heads()[0] == PLANTED[a] and len(weak.heads()) > 1  # a weaker penalty lets noise heads in
        again = GroupLassoHeads(0.01).fit(X, C[:, j])
        assert np.array_equal(again.head_norms_, weak.head_norms_)  # no randomness anywhere
    assert GroupLassoHeads(0.999).fit(X, C[:, 0]).heads() in ([], [PLANTED["food"]])
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        GroupLassoHeads(1.5)
    with pytest.raises(ValueError, match="layers, heads, head_dim"):
        GroupLassoHeads().fit(X[:, 0], C[:, 0])
    with pytest.raises(ValueError, match="0 rows"):
        GroupLassoHeads().fit(X[:0], C[:0, 0])
