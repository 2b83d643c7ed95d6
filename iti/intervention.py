"""An ITI intervention: a constant shift of chosen heads' outputs, applied with a context manager.

For each chosen head (layer l, head h) the o_proj input slice of that head is shifted by
``alpha * std * direction`` at the selected positions: ITI's parametrisation of a :class:`iti.Steering` at the
``head_out`` site (:meth:`Intervention.to_steering`), which is what applies it. Positions are those of
:mod:`iti.positions` (default ``"last"``: the last position of each forward pass, i.e. the last prompt token and
every generated token; batches must be left-padded).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ._version import __version__
from .architectures import HeadGeometry, model_layout
from .errors import FeatureFileError, GeometryMismatchError, HeadIndexError
from .io import atomic_save_safetensors, atomic_write_json, read_checked_tensors, sha256_file
from .positions import Positions as InterventionPositions
from .steering import Steering, check_made_for

META_FILE = "intervention.json"
TENSOR_FILE = "intervention.safetensors"




@dataclass
class Intervention:
    """Chosen heads with unit directions and projection stds; ``alpha`` scales the shift."""

    heads: list[tuple[int, int]]
    directions: np.ndarray  # [K, D], unit norm
    stds: np.ndarray  # [K]
    alpha: float
    model_name: str
    geometry: HeadGeometry
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.heads = [(int(l), int(h)) for l, h in self.heads]
        self.directions = np.asarray(self.directions, dtype=np.float32)
        self.stds = np.asarray(self.stds, dtype=np.float32).reshape(-1)
        self.alpha = float(self.alpha)
        if not self.heads:
            raise HeadIndexError("an intervention needs at least one head")
        if len(set(self.heads)) != len(self.heads):
            raise HeadIndexError("an intervention lists a head twice")
        for l, h in self.heads:
            self.geometry.check_head(l, h)
        k, d = len(self.heads), self.geometry.head_dim
        if self.directions.shape != (k, d):
            raise ValueError(f"directions must be [{k}, {d}] for {k} heads of head_dim {d}, got {self.directions.shape}")
        if self.stds.shape != (k,):
            raise ValueError(f"stds must have {k} entries, got {self.stds.shape}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be finite and >= 0, got {self.alpha} (to steer the other way, negate the directions)")
        if not (np.isfinite(self.directions).all() and np.isfinite(self.stds).all()):
            raise ValueError("directions and stds must be finite")
        if (self.stds < 0).any():
            raise ValueError("stds must be non-negative")
        order = sorted(range(k), key=lambda j: self.heads[j])
        self.heads = [self.heads[j] for j in order]
        self.directions, self.stds = self.directions[order], self.stds[order]

    # --- the shift -------------------------------------------------------------------------------------------
    def with_alpha(self, alpha: float) -> Intervention:
        """A copy with another ``alpha`` (same heads, directions and stds); this one is left unchanged."""
        return replace(self, alpha=alpha, meta=dict(self.meta))

    def layer_shifts(self) -> dict[int, np.ndarray]:
        """Per intervened layer, the [H * D] vector added to the o_proj input."""
        g = self.geometry
        out: dict[int, np.ndarray] = {}
        for (l, h), direction, std in zip(self.heads, self.directions, self.stds):
            vec = out.setdefault(l, np.zeros(g.num_heads * g.head_dim, dtype=np.float32))
            vec[h * g.head_dim : (h + 1) * g.head_dim] = self.alpha * std * direction
        return out

    #: ``Intervention.from_contrast_pairs(model, tokenizer, positive_prompts, negative_prompts, *, num_heads=8,
    #: method="mass_mean", selector="probe_accuracy", alpha=5.0, val_ratio=0.2, seed=0, batch_size=16,
    #: progress=False)``: steer toward a concept named by examples (probes on every head's last-token output, the
    #: best ``num_heads``, mass-mean directions). Defined in :mod:`iti.fitting` (the value does not depend on how
    #: values are fitted) and attached there, which importing ``iti`` does.
    from_contrast_pairs: ClassVar[Callable[..., Intervention]]

    # --- arithmetic: interventions compose like the shifts they add ---------------------------------------------
    def head_shifts(self) -> dict[tuple[int, int], np.ndarray]:
        """Per head, the [D] vector added to its output: ``alpha * std * direction``."""
        return {head: self.alpha * float(std) * direction.astype(np.float64)
                for head, direction, std in zip(self.heads, self.directions, self.stds)}

    @classmethod
    def from_head_shifts(cls, shifts: dict[tuple[int, int], np.ndarray], model_name: str, geometry: HeadGeometry,
                         meta: dict[str, Any] | None = None) -> Intervention:
        """The intervention that adds these per-head vectors: unit directions, stds = their norms, alpha 1. Heads
        whose shift is zero are left out."""
        kept = {h: np.asarray(v, dtype=np.float64) for h, v in shifts.items() if np.linalg.norm(v) > 0}
        if not kept:
            raise HeadIndexError("the composed intervention shifts no head (every shift cancelled)")
        heads = sorted(kept)
        norms = np.array([np.linalg.norm(kept[h]) for h in heads])
        dirs = np.stack([kept[h] / n for h, n in zip(heads, norms)])
        return cls(heads, dirs, norms, 1.0, model_name, geometry, dict(meta or {}))

    def _check_same_geometry(self, other: Intervention) -> None:
        if not isinstance(other, Intervention):
            raise TypeError(f"can only combine an Intervention with another, not {type(other).__name__}")
        if other.geometry != self.geometry:
            raise GeometryMismatchError(f"cannot combine interventions of two geometries: {self.geometry} and {other.geometry}")

    def __add__(self, other: Intervention) -> Intervention:
        """Both shifts at once: the union of the heads, shared heads' shifts added."""
        self._check_same_geometry(other)
        shifts = self.head_shifts()
        for head, vec in other.head_shifts().items():
            shifts[head] = shifts.get(head, 0.0) + vec
        name = self.model_name if self.model_name == other.model_name else f"{self.model_name}+{other.model_name}"
        return Intervention.from_head_shifts(shifts, name, self.geometry, {"sum_of": [self.meta, other.meta]})

    def __neg__(self) -> Intervention:
        """The opposite shift (negated directions, same strength): undoes this one when applied with it."""
        return replace(self, directions=-self.directions, meta={"negated": dict(self.meta)})

    def __sub__(self, other: Intervention) -> Intervention:
        return self + (-other)

    def __mul__(self, k: float) -> Intervention:
        """``k`` times the shift; a negative ``k`` also turns the directions round (alpha stays >= 0)."""
        k = float(k)
        if not np.isfinite(k):
            raise ValueError(f"the factor must be finite, got {k}")
        scaled = replace(self, alpha=self.alpha * abs(k), meta=dict(self.meta))
        return -scaled if k < 0 else scaled

    __rmul__ = __mul__

    def fingerprint(self) -> str:
        """Identifies the exact shift (for caches): heads, directions, stds, alpha, model."""
        h = hashlib.sha256()
        h.update(json.dumps([self.model_name, self.heads, self.alpha, self.geometry.to_dict()]).encode())
        h.update(self.directions.tobytes())
        h.update(self.stds.tobytes())
        return h.hexdigest()[:16]

    def check_made_for(self, model_name: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
        """Raise InterventionModelError unless this intervention was made for the model ``model_name`` names
        (:func:`iti.models.same_model`; a model of the same geometry is still another model). An intervention that
        records no model is not checked. ``source``: where it was read from, for the message."""
        check_made_for(self.model_name, model_name, f"the intervention {source}" if source is not None else "this intervention")

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise GeometryMismatchError unless the model has the head geometry this intervention was made for."""
        g = model_layout(model).geometry
        if g != self.geometry:
            run = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            raise GeometryMismatchError(
                f"this intervention was made for {self.model_name} with {self.geometry}; the model it is used on "
                f"({run}) has {g}"
            )

    def to_steering(self, positions: InterventionPositions = "last") -> Steering:
        """The same shift as a site-general :class:`iti.Steering`: one ``head_out`` vector per intervened layer."""
        return Steering({("head_out", l): v for l, v in self.layer_shifts().items()}, self.geometry, self.model_name,
                        positions, {"intervention": self.meta})

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module, positions: InterventionPositions = "last") -> Iterator[Intervention]:
        """Shift the chosen heads while the block runs; every hook is removed on exit.

        ``positions="last"`` means the last column of each forward pass (see :mod:`iti.positions`), not each row's
        last non-pad token as when capturing: a right-padded batch is refused with :class:`PaddingError` at its
        forward pass. Pad on the left (``tokenizer.padding_side = "left"``, what :func:`iti.load_model` returns).
        """
        if model_layout(model).geometry != self.geometry:
            self.check_model(model)
        with self.to_steering(positions).applied(model):
            yield self

    # --- files ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/`` with ``intervention.safetensors`` (directions, stds) and ``intervention.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(path / TENSOR_FILE, {"directions": self.directions, "stds": self.stds})
        atomic_write_json(path / META_FILE, {
            "format": "iti-intervention",
            "format_version": 1,
            "iti_version": __version__,
            "model_name": self.model_name,
            "geometry": self.geometry.to_dict(),
            "alpha": self.alpha,
            "heads": [list(h) for h in self.heads],
            "fingerprint": self.fingerprint(),
            "tensors_sha256": sha256_file(path / TENSOR_FILE),
            "meta": self.meta,
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None = None) -> Intervention:
        """Read a saved intervention; with ``model``, refuse it unless the head geometry matches."""
        path = Path(path)
        meta, tensors = read_checked_tensors(path, META_FILE, TENSOR_FILE, "iti-intervention", "intervention file")
        try:
            inter = cls(heads=[tuple(h) for h in meta["heads"]], directions=tensors["directions"], stds=tensors["stds"],
                        alpha=meta["alpha"], model_name=meta["model_name"], geometry=HeadGeometry.from_dict(meta["geometry"]),
                        meta=meta.get("meta", {}))
        except (KeyError, TypeError) as e:
            raise FeatureFileError(f"{path} is an incomplete intervention: missing {e}") from None
        if model is not None:
            inter.check_model(model)
        return inter
