"""The statistics the results files quote: seeded bootstrap CIs and paired permutation tests over questions, and
the exact McNemar test with its power (what difference a paired cell of a given size could have detected)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.stats import binom


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of ``values`` by resampling its entries."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(v.mean()), float(lo), float(hi)


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, **kw) -> tuple[float, float, float]:
    """CI of mean(a - b) over paired items (the same questions)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, **kw)


def paired_permutation_p(a: np.ndarray, b: np.ndarray, *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of mean(a - b) = 0 over paired items by random sign flips of the differences (the
    paired permutation test; exact in the limit, seeded, with the +1 correction so p is never 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    d = a - b
    if d.size == 0:
        raise ValueError("no values to test")
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 1000):  # chunks keep memory at 1000 x n
        signs = rng.choice([-1.0, 1.0], size=(min(1000, n_perm - start), d.size))
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return (hits + 1) / (n_perm + 1)


def mcnemar_exact(a, b) -> tuple[int, int, float]:
    """Discordant counts (a only, b only) and the exact two-sided McNemar p-value (binomial, p = 0.5)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n01, n10 = int((x & ~y).sum()), int((~x & y).sum())
    return n01, n10, float(_mcnemar_p(min(n01, n10), n01 + n10))


def _mcnemar_p(k, m):
    """Exact two-sided McNemar p-value when the smaller side of ``m`` discordant pairs has ``k`` (arrays allowed);
    the one tail the test and its power both use."""
    return np.minimum(1.0, 2 * binom.cdf(k, m, 0.5))


def mcnemar_min_pairs(level: float = 0.05) -> int:
    """The fewest discordant pairs with which the exact two-sided test can reject at ``level`` (all going one way:
    p = 2 / 2^n); below it no cell can detect anything."""
    return max(1, math.ceil(math.log2(2 / level) - 1e-12))


@lru_cache(maxsize=64)
def _mcnemar_critical(n: int, level: float) -> np.ndarray:
    """For 0..n discordant pairs: the largest k such that k or fewer of them going one way rejects the exact
    two-sided McNemar test at ``level`` (-1 where no split rejects)."""
    crit = np.full(n + 1, -1, dtype=np.int64)
    for m in range(n + 1):
        ks = np.arange((m + 1) // 2)  # k < m / 2
        ok = ks[_mcnemar_p(ks, m) <= level]
        if ok.size:
            crit[m] = ok.max()
    return crit


def mcnemar_power(n: int, discordance: float, difference: float, *, level: float = 0.05) -> float:
    """Exact power of the two-sided exact McNemar test on ``n`` pairs when a pair is discordant with probability
    ``discordance`` (= p10 + p01) and the two arms differ by ``difference`` (= p10 - p01, so |difference| <=
    discordance): the sum over the number of discordant pairs of the chance that their split rejects."""
    if n < 0 or not 0 <= abs(difference) <= discordance <= 1:
        raise ValueError(f"need n >= 0 and |difference| <= discordance <= 1, got n={n}, discordance={discordance}, "
                         f"difference={difference}")
    if discordance == 0:
        return 0.0
    q = min(1.0, (discordance + abs(difference)) / (2 * discordance))  # share of discordant pairs going the winning way
    m = np.arange(n + 1)
    crit = _mcnemar_critical(n, level)
    reject = np.where(crit >= 0, binom.cdf(crit, m, q) + binom.sf(m - crit - 1, m, q), 0.0)
    return float((binom.pmf(m, n, discordance) * reject).sum())


def mcnemar_detectable_difference(n: int, *, discordance: float = 0.0, power: float = 0.8, level: float = 0.05,
                                  tol: float = 1e-4) -> float:
    """The smallest difference |p10 - p01| that the exact two-sided McNemar test on ``n`` pairs detects with
    ``power``, when pairs disagree at least at rate ``discordance`` (discordance max(``discordance``, difference);
    0: the best case, every disagreement going the same way). NaN when even a difference of 1 is not detectable
    (fewer than :func:`mcnemar_min_pairs` pairs: 6 at level 0.05)."""
    def pw(d: float) -> float:
        return mcnemar_power(n, max(discordance, d), d, level=level)

    if n <= 0 or pw(1.0) < power:
        return float("nan")
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pw(mid) >= power else (mid, hi)
    return hi
