"""Choosing heads and directions, and scaling them (honest_llama's get_top_heads / get_com_directions /
get_interventions_dict, with explicit seeds), and :func:`fit_intervention`, the one recipe that turns labelled
activations into an :class:`~iti.intervention.Intervention`: probes -> heads -> directions -> unit -> projection
stds."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .architectures import HeadGeometry
from .errors import EmptyInputError, HeadIndexError, InvalidOptionError
from .features import FeatureSet
from .intervention import Intervention
from .probes import HeadProbes, split_questions

HEAD_CHOICES = ("probe_accuracy", "random")


def top_heads(accuracies: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k heads with the highest validation accuracy (ties broken toward the later flat index, like
    ``np.argsort(...)[::-1]`` in the original), as sorted (layer, head) pairs."""
    acc = np.asarray(accuracies)
    if acc.ndim != 2:
        raise ValueError(f"accuracies must be [layers, heads], got shape {acc.shape}")
    _check_k(k, acc.size)
    flat = np.argsort(acc.reshape(-1), kind="stable")[::-1][:k]
    return sorted((int(i // acc.shape[1]), int(i % acc.shape[1])) for i in flat)


def random_heads(geometry: HeadGeometry, k: int, seed: int) -> list[tuple[int, int]]:
    """k heads drawn uniformly without replacement (the random-heads control)."""
    _check_k(k, geometry.num_total_heads)
    flat = np.random.default_rng(seed).choice(geometry.num_total_heads, size=k, replace=False)
    return sorted((int(i // geometry.num_heads), int(i % geometry.num_heads)) for i in flat)


def _check_k(k: int, total: int) -> None:
    if not 1 <= int(k) <= total:
        raise HeadIndexError(f"number of heads must be between 1 and {total} (the model's layers x heads), got {k}")


def _check_rows(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).reshape(-1)
    if len(X) != len(y):
        raise ValueError(f"{len(X)} feature rows but {len(y)} labels")
    if not (y == 1).any() or not (y == 0).any():
        raise EmptyInputError("directions need both true (1) and false (0) examples")
    return X, y


def mass_mean_directions(X: np.ndarray, y: np.ndarray, heads: list[tuple[int, int]]) -> np.ndarray:
    """mean(true) - mean(false) of each chosen head, ``[K, D]`` (not yet normalised)."""
    X, y = _check_rows(X, y)
    li = np.array([l for l, _ in heads])
    hi = np.array([h for _, h in heads])
    pos = np.asarray(X[y == 1][:, li, hi], dtype=np.float64).mean(axis=0)
    neg = np.asarray(X[y == 0][:, li, hi], dtype=np.float64).mean(axis=0)
    return pos - neg


def probe_directions(coef: np.ndarray, heads: list[tuple[int, int]]) -> np.ndarray:
    """The probes' weight vectors of the chosen heads, ``[K, D]``."""
    return np.stack([np.asarray(coef[l, h], dtype=np.float64) for l, h in heads])


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


def _probe_method(X, labels, chosen, probes, geometry, seed):
    return probe_directions(probes.probes.coef_, chosen)


#: direction method -> how it makes the raw (not yet unit) directions of the chosen heads
DIRECTION_METHODS = {
    "mass_mean": lambda X, labels, chosen, probes, geometry, seed: mass_mean_directions(X, labels, chosen),
    "probe": _probe_method,
    "random": lambda X, labels, chosen, probes, geometry, seed: random_directions(len(chosen), geometry.head_dim, seed),
}


def fit_intervention(
    features: FeatureSet | np.ndarray,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    *,
    num_heads: int = 48,
    method: str = "mass_mean",
    head_choice: str | Sequence[tuple[int, int]] = "probe_accuracy",
    alpha: float = 15.0,
    std_from: FeatureSet | np.ndarray | None = None,
    probes: ProbeFit | None = None,
    val_ratio: float = 0.2,
    seed: int = 42,
    geometry: HeadGeometry | None = None,
    model_name: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Intervention:
    """An intervention from labelled head activations: heads, unit directions, projection stds, alpha.

    ``features``: a :class:`FeatureSet` (labels, groups, geometry and model name come with it) or an array
    ``[N, layers, heads, head_dim]`` with ``labels`` (1 = the side to steer toward) and optionally ``groups`` (rows
    of one group, e.g. one question, stay on one side of the probe split; default every row its own group).
    ``head_choice``: ``"probe_accuracy"`` (the ``num_heads`` heads whose probes score best on held-out groups),
    ``"random"`` (a seeded draw), or an explicit list of (layer, head). ``method``: ``"mass_mean"`` (mean of the
    positive rows minus mean of the negative ones), ``"probe"`` (the probe's weights) or ``"random"``. The shift
    of each head is ``alpha x std x direction``, the std measured on ``std_from`` (default: the same rows)
    projected on the direction. ``probes`` reuses probes fitted before (several interventions from one fit).
    With an array and no ``geometry``, the geometry is read off the array's shape (``num_kv_heads = heads``,
    ``hidden_size = heads x head_dim``); pass the model's (``iti.model_layout(model).geometry``) to apply it.
    """
    if isinstance(features, FeatureSet):
        X = features.head_wise
        labels = features.labels if labels is None else labels
        groups = features.question_ids if groups is None else groups
        geometry = geometry or features.geometry
        model_name = model_name or features.manifest["model"]["name"]
    else:
        X = np.asarray(features) if not hasattr(features, "shape") else features
        if X.ndim != 4:
            raise ValueError(f"head activations must be [N, layers, heads, head_dim], got shape {tuple(X.shape)}")
        if labels is None:
            raise ValueError("labels are needed with an array of activations")
        if geometry is None:
            _, L, H, D = X.shape
            geometry = HeadGeometry(num_layers=L, num_heads=H, num_kv_heads=H, head_dim=D, hidden_size=H * D)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(X):
        raise ValueError(f"{len(X)} activation rows but {len(labels)} labels")
    groups = np.arange(len(X)) if groups is None else np.asarray(groups)
    if method not in DIRECTION_METHODS:
        raise InvalidOptionError(f"--method: one of {', '.join(DIRECTION_METHODS)}, got {method!r}")
    if isinstance(head_choice, str) and head_choice not in HEAD_CHOICES:
        raise InvalidOptionError(f"--head_choice: one of {', '.join(HEAD_CHOICES)} or a list of (layer, head), got {head_choice!r}")
    if probes is None and (head_choice == "probe_accuracy" or method == "probe"):
        probes = fit_head_probes(X, labels, groups, val_ratio=val_ratio, seed=seed)
    if isinstance(head_choice, str) and head_choice == "probe_accuracy":
        assert probes is not None  # fitted above
        chosen = top_heads(probes.accuracies, num_heads)
    elif isinstance(head_choice, str):
        chosen = random_heads(geometry, num_heads, seed)
    else:
        chosen = sorted({(int(l), int(h)) for l, h in head_choice})
        for l, h in chosen:
            geometry.check_head(l, h)
        if not chosen:
            raise HeadIndexError("head_choice lists no head")
    directions = unit(DIRECTION_METHODS[method](X, labels, chosen, probes, geometry, seed))
    if std_from is None:
        tune = X
    else:
        tune = std_from.head_wise if isinstance(std_from, FeatureSet) else std_from
    stds = projection_stds(tune, chosen, directions)
    info = {"method": method, "head_choice": head_choice if isinstance(head_choice, str) else "explicit", "seed": seed,
            "num_heads": len(chosen)} if meta is None else meta
    return Intervention(chosen, directions, stds, alpha, model_name or "", geometry, info)
