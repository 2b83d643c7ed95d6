import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from iti.errors import EmptyInputError
from iti.probes import HeadProbes, split_questions


def _data(n=300, layers=2, heads=3, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, layers, heads, d)).astype(np.float32)
    w = rng.normal(size=(layers, heads, d))
    y = (np.einsum("nlhd,lhd->n", X, w) / (layers * heads) + 0.5 * rng.normal(size=n) > 0).astype(int)
    return X, y


def test_matches_sklearn_per_head():
    X, y = _data()
    probes = HeadProbes().fit(X, y)
    for l in range(2):
        for h in range(3):
            sk = LogisticRegression(max_iter=1000, tol=1e-8).fit(X[:, l, h], y)
            np.testing.assert_allclose(probes.coef_[l, h], sk.coef_[0], atol=2e-3)
            np.testing.assert_allclose(probes.intercept_[l, h], sk.intercept_[0], atol=2e-3)
            np.testing.assert_allclose(probes.predict_proba(X)[:, l, h], sk.predict_proba(X[:, l, h])[:, 1], atol=1e-3)
    assert probes.fit_.max_grad_norm < 1e-4


def test_estimator_interface_shapes_and_score():
    X, y = _data()
    probes = HeadProbes(C=0.5).fit(X[:200], y[:200])
    assert probes.predict_proba(X[200:]).shape == (100, 2, 3)
    assert probes.predict(X[200:]).dtype == np.int64
    acc = probes.score(X[200:], y[200:])
    assert acc.shape == (2, 3) and ((acc >= 0) & (acc <= 1)).all()
    np.testing.assert_allclose(acc, (probes.predict(X[200:]) == y[200:, None, None]).mean(0))


def test_bad_inputs_are_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="one class"):
        HeadProbes().fit(X, np.ones_like(y))
    with pytest.raises(ValueError, match="labels must be 0/1"):
        HeadProbes().fit(X, y * 2)
    with pytest.raises(ValueError, match="labels"):
        HeadProbes().fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"\[N, layers, heads, head_dim\]"):
        HeadProbes().fit(X[:, 0], y)
    with pytest.raises(RuntimeError, match="not fitted"):
        HeadProbes().predict(X)
    with pytest.raises(ValueError, match="do not match"):
        HeadProbes().fit(X, y).predict(X[:, :1])
    with pytest.raises(ValueError):
        HeadProbes(C=0)


def test_split_is_by_question_and_seeded():
    qids = np.repeat(np.arange(50), 4)
    train, val = split_questions(qids, 0.2, seed=3)
    assert len(train) == 40 and len(val) == 10 and not set(train) & set(val)
    assert np.array_equal(train, split_questions(qids, 0.2, seed=3)[0])
    assert not np.array_equal(train, split_questions(qids, 0.2, seed=4)[0])
    with pytest.raises(EmptyInputError):
        split_questions(np.zeros(4, int), 0.2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])  # 1e39 overflows the float32 the fit runs in
def test_non_finite_features_are_refused(bad):
    from iti.errors import ItiError

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3, 4, 8))
    y = np.arange(40) % 2
    X[7, 1, 2, 5] = bad
    X[9, 1, 2, 0] = bad
    with pytest.raises(ItiError) as err:
        HeadProbes().fit(X, y)
    msg = str(err.value)
    assert "(1, 2)" in msg and "2 of 40 rows" in msg and "[7, 9]" in msg, msg
    assert isinstance(err.value, ValueError)
