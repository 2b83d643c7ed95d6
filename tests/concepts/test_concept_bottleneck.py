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


def test_label_head_is_fitted_on_out_of_fold_concept_probabilities():
    """Concepts without signal in 40 dims from 60 rows: a probe fits its own rows almost perfectly, so the label
    head must see each row's probabilities from probes that did not train on it (or on its group)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    n, K, Creg = 60, 4, 100.0
    X = rng.normal(size=(n, 2, 2, 40))
    C = rng.integers(0, 3, size=(n, 4))
    y = rng.integers(0, 5, size=n)
    groups = [f"r{i // 3:02d}" for i in range(n)]  # 20 originals, each with two edits
    heads = {a: [(j // 2, j % 2)] for j, a in enumerate(ASPECTS)}
    bn = SparseConceptBottleneck(C=Creg, seed=7, label_folds=K, heads=heads).fit(X, C, y, groups)

    # the documented fold rule: sorted distinct groups, shuffled by the seed, dealt to the folds in turn
    ids = sorted(set(groups))
    fold_of = {ids[g]: i % K for i, g in enumerate(np.random.default_rng(7).permutation(len(ids)))}
    folds = np.array([fold_of[g] for g in groups])
    assert np.array_equal(bn.folds_, folds)
    assert all(len({folds[i] for i in range(n) if groups[i] == g}) == 1 for g in ids)  # a group stays in one fold
    assert sorted(np.bincount(folds)) == [15, 15, 15, 15]

    def probe(rows):
        return [LogisticRegression(C=Creg, max_iter=2000, random_state=7).fit(X[rows, l, h], C[rows, j])
                for j, (l, h) in enumerate(heads[a][0] for a in ASPECTS)]

    out_of_fold = np.zeros((n, 4, 3))
    for f in range(K):
        held = folds == f
        for j, m in enumerate(probe(~held)):
            l, h = heads[ASPECTS[j]][0]
            out_of_fold[np.ix_(held, [j], m.classes_)] = m.predict_proba(X[held, l, h])[:, None, :]
    in_sample = np.zeros((n, 4, 3))
    for j, m in enumerate(probe(np.ones(n, bool))):
        l, h = heads[ASPECTS[j]][0]
        in_sample[:, j, m.classes_] = m.predict_proba(X[:, l, h])

    np.testing.assert_allclose(bn.label_inputs_, out_of_fold, atol=1e-6)
    label = LogisticRegression(C=Creg, max_iter=2000, random_state=7).fit(out_of_fold.reshape(n, -1), y)
    np.testing.assert_allclose(bn.label_model_.coef_, label.coef_, atol=1e-4)
    np.testing.assert_allclose(bn.concept_probabilities(X), in_sample, atol=1e-6)  # test-time probes: every row
    def gold(p):
        return np.take_along_axis(p, C[..., None], -1).mean()

    assert gold(in_sample) > 0.95 and gold(out_of_fold) < 0.5  # over-confident on its own rows, chance elsewhere

    # a rare class held by one group only: its fold's probes see a single class and give it probability 1
    rare = C.copy()
    rare[:, 3] = 2
    rare[[0, 1, 2], 3] = 0  # group r00
    held = folds == folds[0]
    one_class = SparseConceptBottleneck(C=Creg, seed=7, label_folds=K, heads=heads).fit(X, rare, y, groups)
    np.testing.assert_array_equal(one_class.label_inputs_[held, 3], np.tile([0.0, 0.0, 1.0], (held.sum(), 1)))
    np.testing.assert_allclose(one_class.label_inputs_[:, :3], bn.label_inputs_[:, :3], atol=1e-9)  # other aspects


def test_cross_fitting_refuses_bad_folds_before_fitting():
    from iti.concepts.bottleneck import grouped_folds
    from iti.errors import InvalidOptionError

    X, C, y = planted(30, 0)
    bn = SparseConceptBottleneck(heads={a: [PLANTED[a]] for a in ASPECTS})
    with pytest.raises(InvalidOptionError, match=r"^--label_folds: at most the number of distinct groups \(3\), got 5$"):
        bn.fit(X, C, y, [i % 3 for i in range(30)])
    with pytest.raises(InvalidOptionError, match=r"^groups: one group id per row \(30 rows\), got shape \(29,\)$"):
        bn.fit(X, C, y, list(range(29)))
    with pytest.raises(InvalidOptionError, match=r"^--label_folds: an integer >= 2"):
        SparseConceptBottleneck(label_folds=1, heads=bn.heads).fit(X, C, y)
    assert not hasattr(bn, "concept_models_")
    from iti.concepts.experiment import ConceptConfig

    with pytest.raises(InvalidOptionError, match=r"^--label_folds: an integer >= 2"):
        ConceptConfig(label_folds=1).validate()
    assert np.array_equal(grouped_folds(list(range(30)), 5, 1), grouped_folds(np.arange(30), 5, 1))
    assert not np.array_equal(grouped_folds(np.arange(30), 5, 1), grouped_folds(np.arange(30), 5, 2))
