"""honest_llama's steps that the plug-ins share (get_top_heads' order, the random direction, unit length, the
projection stds, probes per head split by group), with explicit seeds: the functions behind :mod:`iti.selectors`
and :mod:`iti.methods`, which :func:`iti.fitting.fit_intervention` puts together (probes -> units -> directions ->
unit -> stds). Random heads live in their plug-in (``RandomUnits``); the mass-mean direction here (``MassMean`` calls it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EmptyInputError, HeadIndexError
from .probes import HeadProbes, split_questions


def top_heads(accuracies: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k heads with the highest validation accuracy, as sorted (layer, head) pairs.

    Chosen exactly as honest_llama's ``get_top_heads``: ``np.argsort(accuracies.ravel())[::-1][:k]`` with numpy's
    default sort, which is not stable. Among heads of equal accuracy at the cut, which ones are kept is therefore
    numpy's choice (deterministic for a given array, numpy version and CPU), not "the later flat index"; it is the
    same choice the original makes on the same accuracies."""
    acc = np.asarray(accuracies)
    if acc.ndim != 2:
        raise ValueError(f"accuracies must be [layers, heads], got shape {acc.shape}")
    _check_k(k, acc.size)
    flat = np.argsort(acc.reshape(-1))[::-1][:k]  # default kind, as the original
    return sorted((int(i // acc.shape[1]), int(i % acc.shape[1])) for i in flat)


def _check_k(k: int, total: int) -> None:
    if not 1 <= int(k) <= total:
        raise HeadIndexError(f"number of heads must be between 1 and {total} (the model's layers x heads), got {k}")


def both_sides(labels: np.ndarray) -> np.ndarray:
    """``labels`` as a flat array, refused with :class:`EmptyInputError` unless both sides (1 and 0) are present."""
    y = np.asarray(labels).reshape(-1)
    if not (y == 1).any() or not (y == 0).any():
        raise EmptyInputError("directions need both positive (1) and negative (0) examples")
    return y


def mass_mean(X_units: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """mean(positive rows) - mean(negative rows) of ``[N, K, D]`` unit activations, ``[K, D]`` (not normalised): the
    one implementation of the mass-mean direction (:class:`iti.methods.MassMean` calls it)."""
    y = np.asarray(labels).reshape(-1)
    if len(X_units) != len(y):
        raise ValueError(f"{len(X_units)} feature rows but {len(y)} labels")
    both_sides(y)
    return np.asarray(X_units[y == 1], np.float64).mean(axis=0) - np.asarray(X_units[y == 0], np.float64).mean(axis=0)


def mass_mean_directions(X: np.ndarray, y: np.ndarray, heads: list[tuple[int, int]]) -> np.ndarray:
    """:func:`mass_mean` of the chosen heads of ``[N, layers, heads, D]`` features, ``[K, D]``."""
    li, hi = np.array([l for l, _ in heads]), np.array([h for _, h in heads])
    return mass_mean(np.asarray(X)[:, li, hi], y)


def random_directions(k: int, head_dim: int, seed: int) -> np.ndarray:
    """Gaussian directions (the random-direction control; the original hard-codes 128 dimensions)."""
    return np.random.default_rng(seed).normal(size=(k, head_dim))


def unit(directions: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length; refuses a zero or non-finite norm instead of dividing by it."""
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    if (norms == 0).any() or not np.isfinite(norms).all():
        raise ValueError("a direction has zero or non-finite norm")
    return directions / norms


def projection_stds(X_tune: np.ndarray, heads: list[tuple[int, int]], unit_directions: np.ndarray) -> np.ndarray:
    """Population std (ddof=0, as the original's np.std) of the tuning activations projected on each direction."""
    if len(X_tune) < 2:
        raise EmptyInputError("need at least two tuning rows to measure a spread")
    out = np.empty(len(heads))
    for j, (l, h) in enumerate(heads):
        out[j] = np.std(np.asarray(X_tune[:, l, h], dtype=np.float64) @ unit_directions[j])
    return out


@dataclass
class ProbeFit:
    """Probes fitted on the training groups, with each head's accuracy on held-out validation groups."""

    probes: HeadProbes
    accuracies: np.ndarray  # [L, H]
    train_groups: np.ndarray
    val_groups: np.ndarray

    @property
    def train_questions(self) -> np.ndarray:
        """TruthfulQA's name for the training groups."""
        return self.train_groups

    @property
    def val_questions(self) -> np.ndarray:
        """TruthfulQA's name for the validation groups."""
        return self.val_groups


def fit_head_probes(X: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, val_ratio: float = 0.2, seed: int = 42,
                    split_groups: np.ndarray | None = None) -> ProbeFit:
    """Split the groups (``split_groups``, default every group once, ascending) into train and validation, seeded,
    so that rows of one group never straddle the split; fit every head's probe on train and score it on
    validation."""
    groups = np.asarray(groups)
    split = np.unique(groups) if split_groups is None else np.asarray(split_groups)
    tr, va = split_questions(split, val_ratio, seed)
    rows_tr, rows_va = np.isin(groups, tr), np.isin(groups, va)
    labels = np.asarray(labels)
    probes = HeadProbes().fit(np.asarray(X[rows_tr], dtype=np.float32), labels[rows_tr])
    accuracies = probes.score(np.asarray(X[rows_va], dtype=np.float32), labels[rows_va])
    return ProbeFit(probes, accuracies, tr, va)
