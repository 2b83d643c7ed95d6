"""Selectors: which units of a site get a shift, one small class each.

Units are (layer, unit) pairs on a grid ``[layers, units]``: (layer, head) at ``head_out``, (layer, 0) at a
residual site (one vector per layer). A selector returns sorted units; one that ranks by probe accuracy asks the
fit for probes (``needs_probes``).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .directions import top_heads
from .errors import HeadIndexError, InvalidOptionError

Unit = tuple[int, int]


class UnitSelector:
    """Base of the selectors: :meth:`select` from the grid's shape, the probes' accuracies and a seed."""

    needs_probes: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def select(self, grid: tuple[int, int], accuracies: np.ndarray | None, seed: int) -> list[Unit]:  # pragma: no cover
        raise NotImplementedError


def _check_count(k: int, grid: tuple[int, int]) -> int:
    total = grid[0] * grid[1]
    if not 1 <= int(k) <= total:
        what = "heads (layers x heads)" if grid[1] > 1 else "layers"
        raise HeadIndexError(f"number of units must be between 1 and {total}, the model's {what}; got {k}")
    return int(k)


@dataclass(frozen=True)
class TopByProbeAccuracy(UnitSelector):
    """The ``k`` units whose probes score best on held-out groups (ITI's head choice, honest_llama's
    ``get_top_heads``, its unstable argsort included)."""

    k: int
    needs_probes: ClassVar[bool] = True
    name: ClassVar[str] = "probe_accuracy"

    def select(self, grid, accuracies, seed):
        if accuracies is None:
            raise InvalidOptionError("choosing by probe accuracy needs fitted probes")
        _check_count(self.k, grid)
        return top_heads(np.asarray(accuracies).reshape(grid), self.k)


@dataclass(frozen=True)
class RandomUnits(UnitSelector):
    """``k`` units drawn uniformly without replacement with the fit's seed (the random-heads control)."""

    k: int
    name: ClassVar[str] = "random"

    def select(self, grid, accuracies, seed):
        k = _check_count(self.k, grid)
        flat = np.random.default_rng(seed).choice(grid[0] * grid[1], size=k, replace=False)
        return sorted((int(i // grid[1]), int(i % grid[1])) for i in flat)


@dataclass(frozen=True)
class ExplicitUnits(UnitSelector):
    """The units given: (layer, head) pairs, or layer numbers at a residual site."""

    units: tuple = field(default_factory=tuple)
    name: ClassVar[str] = "explicit"

    def __init__(self, units: Iterable):
        object.__setattr__(self, "units", tuple(u if isinstance(u, (int, np.integer)) else tuple(u) for u in units))

    def select(self, grid, accuracies, seed):
        chosen = sorted({(int(u), 0) if isinstance(u, (int, np.integer)) else (int(u[0]), int(u[1])) for u in self.units})
        if not chosen:
            raise HeadIndexError("the explicit selection lists no unit")
        for layer, unit in chosen:
            if not 0 <= layer < grid[0]:
                raise HeadIndexError(f"layer {layer} out of range: the model has layers 0..{grid[0] - 1}")
            if not 0 <= unit < grid[1]:
                raise HeadIndexError(f"head {unit} out of range: each layer has heads 0..{grid[1] - 1}")
        return chosen


@dataclass(frozen=True)
class Layers(UnitSelector):
    """Every unit of the given layers (one vector per layer at a residual site; all heads at ``head_out``)."""

    layers: tuple[int, ...] = ()
    name: ClassVar[str] = "layers"

    def __init__(self, layers: Iterable[int]):
        object.__setattr__(self, "layers", tuple(int(l) for l in layers))

    def select(self, grid, accuracies, seed):
        if not self.layers:
            raise HeadIndexError("Layers() lists no layer")
        for layer in self.layers:
            if not 0 <= layer < grid[0]:
                raise HeadIndexError(f"layer {layer} out of range: the model has layers 0..{grid[0] - 1}")
        return sorted({(l, u) for l in self.layers for u in range(grid[1])})


def get_selector(selector: str | UnitSelector | Iterable, k: int | None = None) -> UnitSelector:
    """A selector from a name (``"probe_accuracy"``, ``"random"``, with ``k``), an explicit list of units, or the
    selector itself."""
    if isinstance(selector, UnitSelector):
        return selector
    if isinstance(selector, str):
        if selector not in ("probe_accuracy", "random"):
            raise InvalidOptionError(f"--selector: one of probe_accuracy, random or a list of units, got {selector!r}")
        if k is None:
            raise InvalidOptionError(f"the {selector} selection needs a number of units")
        return TopByProbeAccuracy(k) if selector == "probe_accuracy" else RandomUnits(k)
    return ExplicitUnits(selector)
