"""Direction methods: how a steering direction is made from labelled activations, one small class each.

A method sees the activations of the chosen units only (``[N, K, D]``: K heads at ``head_out``, K layers at a
residual site), the labels (1 = the side to steer toward), the groups (rows of one group belong together: one
question, one contrast pair) and a seed, and returns raw directions ``[K, D]``. How a direction becomes a shift is
the method's ``scale``:

- ``"std"``: unit direction x the std of the activations projected on it (ITI: alpha is in "stds");
- ``"unit"``: unit direction (RepE: repeng's control vectors are unit PCA components times a coefficient);
- ``"raw"``: the direction as computed (CAA: the mean difference itself times a multiplier).

Adding a method is one class with a ``name`` and ``directions``; :func:`register_method` makes it available by
name (CLI, :func:`iti.fit_steering`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .directions import both_sides, mass_mean, random_directions
from .errors import EmptyInputError, InvalidOptionError


@dataclass(frozen=True)
class FitData:
    """What a method sees: activations of the chosen units, labels, groups, the seed and, when the selection fitted
    probes, their weights on the chosen units."""

    X: np.ndarray  # [N, K, D]
    labels: np.ndarray  # [N] of 0/1
    groups: np.ndarray  # [N]
    seed: int
    probe_coef: np.ndarray | None = None  # [K, D]


class DirectionMethod:
    """Base of the direction methods: a ``name``, a default ``scale`` and :meth:`directions`."""

    name: ClassVar[str] = ""
    scale: ClassVar[str] = "std"
    needs_probes: ClassVar[bool] = False

    def directions(self, data: FitData) -> np.ndarray:  # pragma: no cover - the interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MassMean(DirectionMethod):
    """mean(positive) - mean(negative) over all rows (ITI's center-of-mass direction, ``--use_center_of_mass``)."""

    name = "mass_mean"

    def directions(self, data: FitData) -> np.ndarray:
        return mass_mean(data.X, data.labels)


class ProbeWeights(DirectionMethod):
    """The linear probe's weight vector of each unit (ITI's default direction)."""

    name = "probe"
    needs_probes = True

    def directions(self, data: FitData) -> np.ndarray:
        if data.probe_coef is None:
            raise InvalidOptionError("the probe method needs probes fitted on the units (pass probes or let the fit make them)")
        return np.asarray(data.probe_coef, dtype=np.float64)


class RandomDirection(DirectionMethod):
    """Seeded Gaussian directions (the random-direction control)."""

    name = "random"

    def directions(self, data: FitData) -> np.ndarray:
        return random_directions(data.X.shape[1], data.X.shape[2], data.seed)


def paired_differences(X: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group holding both sides, mean(positive rows) - mean(negative rows): ``[pairs, K, D]``, in order of first
    appearance. A contrast pair is a group with one row of each side; other groups are refused."""
    y = both_sides(labels)
    groups = np.asarray(groups).reshape(-1)
    order = list(dict.fromkeys(groups.tolist()))
    diffs = []
    for g in order:
        rows = groups == g
        pos, neg = rows & (y == 1), rows & (y == 0)
        if not pos.any() or not neg.any():
            continue
        diffs.append(np.asarray(X[pos], np.float64).mean(axis=0) - np.asarray(X[neg], np.float64).mean(axis=0))
    if not diffs:
        raise EmptyInputError("no group holds both a positive and a negative row: these methods need contrast pairs "
                              "(the same group id on the two sides of a pair)")
    return np.stack(diffs)


class MeanDifference(DirectionMethod):
    """CAA (Rimsky et al. 2024; steering-vectors' mean aggregator): the mean over contrast pairs of
    positive - negative, used as it is (``scale="raw"``: the multiplier scales the vector itself)."""

    name = "mean_diff"
    scale = "raw"

    def directions(self, data: FitData) -> np.ndarray:
        return paired_differences(data.X, data.labels, data.groups).mean(axis=0)


class PCADiff(DirectionMethod):
    """RepE as repeng's ``pca_diff`` computes it: the first principal component of the paired differences (PCA
    centres them; scikit-learn's sign convention, its largest entry positive), turned round when more pairs have
    the positive side projecting lower than higher (a tie keeps it); ``scale="unit"``."""

    name = "pca_diff"
    scale = "unit"

    def directions(self, data: FitData) -> np.ndarray:
        diffs = paired_differences(data.X, data.labels, data.groups)  # [P, K, D]
        if len(diffs) < 2:
            raise EmptyInputError("PCA of paired differences needs at least two pairs")
        out = np.empty(diffs.shape[1:])
        for k in range(diffs.shape[1]):
            d = diffs[:, k]
            centred = d - d.mean(axis=0)
            component = np.linalg.svd(centred, full_matrices=False)[2][0]
            if component[np.argmax(np.abs(component))] < 0:  # scikit-learn's PCA sign (svd_flip): kept on a tie below
                component = -component
            projected = d @ component  # positive - negative of each pair, on the component
            if np.mean(projected < 0) > np.mean(projected > 0):
                component = -component
            out[k] = component
        return out


_METHODS: dict[str, type[DirectionMethod]] = {m.name: m for m in (MassMean, ProbeWeights, RandomDirection, MeanDifference, PCADiff)}
#: CLI spellings of the same methods (honest_llama's and the papers' names)
ALIASES = {"com": "mass_mean", "center_of_mass": "mass_mean", "caa": "mean_diff", "repe": "pca_diff"}


def register_method(cls: type[DirectionMethod]) -> type[DirectionMethod]:
    """Make a method available by its ``name`` (usable as a class decorator)."""
    if not cls.name:
        raise InvalidOptionError(f"{cls.__name__} has no name")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """The registered method names."""
    return list(_METHODS)


def get_method(method: str | DirectionMethod) -> DirectionMethod:
    """A method instance from a name (or an alias), or the instance itself."""
    if isinstance(method, DirectionMethod):
        return method
    name = ALIASES.get(str(method), str(method))
    if name not in _METHODS:
        raise InvalidOptionError(f"--method: one of {', '.join(_METHODS)}, got {method!r}")
    return _METHODS[name]()
