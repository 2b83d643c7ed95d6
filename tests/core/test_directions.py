import numpy as np
import pytest

from iti.architectures import HeadGeometry
from iti.directions import projection_stds, random_directions, top_heads, unit
from iti.errors import EmptyInputError, HeadIndexError
from iti.methods import FitData, MassMean, ProbeWeights, RandomDirection
from iti.selectors import RandomUnits

from ..honest_llama_steps import mass_mean_directions, probe_directions, random_heads

G = HeadGeometry(num_layers=3, num_heads=4, num_kv_heads=2, head_dim=5, hidden_size=20)


def test_top_heads_by_accuracy():
    acc = np.zeros((3, 4))
    acc[2, 1], acc[0, 3], acc[1, 0] = 0.9, 0.8, 0.7
    assert top_heads(acc, 2) == [(0, 3), (2, 1)]
    with pytest.raises(HeadIndexError, match="between 1 and 12"):
        top_heads(acc, 13)
    with pytest.raises(HeadIndexError):
        top_heads(acc, 0)


def test_top_heads_break_ties_as_the_originals_argsort():
    """honest_llama's get_top_heads: np.argsort(...)[::-1] with numpy's default (unstable) sort, which keeps other
    tied heads than a stable sort does (the reproduction of issue 16)."""
    a = np.array(([0.7] + [0.6] * 19) * 3 + [0.5] * 30).reshape(10, 9)
    original = sorted(divmod(int(i), 9) for i in np.argsort(a.ravel())[::-1][:10])
    assert top_heads(a, 10) == original
    assert {(0, 0), (2, 2), (4, 4)} <= set(original)  # the three 0.7s, then seven of the 57 tied 0.6s


def test_random_heads_follow_the_seed():
    grid = (G.num_layers, G.num_heads)
    a, b, c = (RandomUnits(5).select(grid, None, seed) for seed in (1, 1, 2))
    assert a == b == random_heads(G, 5, 1) and a != c and len(set(a)) == 5
    assert all(0 <= l < 3 and 0 <= h < 4 for l, h in a)


def test_mass_mean_points_from_false_to_true():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3, 4, 5))
    y = np.arange(200) % 2
    X[y == 1, 1, 2, 0] += 3.0
    heads = [(1, 2), (0, 0)]
    chosen = X[:, [1, 0], [2, 0]]  # the units' activations, [N, K, D]
    raw = MassMean().directions(FitData(chosen, y, np.arange(200), 0))
    np.testing.assert_allclose(raw, mass_mean_directions(X, y, heads), rtol=1e-12)
    d = unit(raw)
    assert d[0, 0] > 0.9 and np.allclose(np.linalg.norm(d, axis=1), 1)
    with pytest.raises(EmptyInputError):
        MassMean().directions(FitData(chosen, np.ones(200), np.arange(200), 0))


def test_probe_and_random_directions_and_stds():
    r = random_directions(2, 5, seed=7)
    assert r.shape == (2, 5) and np.array_equal(r, random_directions(2, 5, seed=7))
    chosen = np.zeros((4, 2, 5))
    assert np.array_equal(RandomDirection().directions(FitData(chosen, np.arange(4) % 2, np.arange(4), 7)), r)
    coef = np.arange(3 * 4 * 5, dtype=float).reshape(3, 4, 5)
    heads = [(2, 3), (0, 1)]
    probe = ProbeWeights().directions(FitData(chosen, np.arange(4) % 2, np.arange(4), 0, coef[[2, 0], [3, 1]]))
    assert np.array_equal(probe, probe_directions(coef, heads))
    X = np.random.default_rng(1).normal(size=(50, 3, 4, 5))
    u = unit(r)
    stds = projection_stds(X, [(0, 1), (2, 2)], u)
    assert np.isclose(stds[1], np.std(X[:, 2, 2] @ u[1]))
    with pytest.raises(ValueError, match="zero"):
        unit(np.zeros((1, 5)))
