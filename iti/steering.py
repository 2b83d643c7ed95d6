"""A steering value: vectors added at chosen (site, layer) points of a model, with a positions policy.

Every steering method in the library ends as one of these: ITI's head shifts (``Intervention.to_steering()``: the
``head_out`` site, each head's slice ``alpha x std x direction``), a mean-difference (CAA) or PCA (RepE) vector on
the residual stream, or a sum of such. The value knows nothing about how it was fitted; it adds, scales, saves,
fingerprints and applies itself::

    steer = iti.Steering({("resid_post", 12): v}, geometry, model_name="...")
    with (2 * steer).applied(model, positions="all"):
        model.generate(...)

Sites (:data:`iti.architectures.SITES`) are resolved per architecture from its spec, so one value is used the same
way on Llama, GPT-2, GPT-NeoX, Falcon and Gemma.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .architectures import SITES, HeadGeometry, ModelLayout, model_layout, site_width
from .errors import FeatureFileError, GeometryMismatchError, HeadIndexError, InvalidOptionError
from .hooks import module_hooks
from .io import atomic_save_safetensors, atomic_write_json, read_checked_tensors, sha256_file
from .positions import Positions, PositionTracker, base_model_path, normalize_positions

META_FILE = "steering.json"
TENSOR_FILE = "steering.safetensors"

SiteKey = tuple[str, int]


@dataclass
class Steering:
    """Vectors per (site, layer), added at the positions ``positions`` selects (see :mod:`iti.positions`)."""

    vectors: dict[SiteKey, np.ndarray]
    geometry: HeadGeometry
    model_name: str = ""
    positions: Positions = "last"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Mapping):
            raise TypeError(f"vectors must be a dict {{(site, layer): vector}}, got {type(self.vectors).__name__}")
        out: dict[SiteKey, np.ndarray] = {}
        for key, vec in self.vectors.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise InvalidOptionError(f"a steering key is (site, layer), got {key!r}")
            site, layer = str(key[0]), int(key[1])
            width = site_width(self.geometry, site)
            if not 0 <= layer < self.geometry.num_layers:
                raise HeadIndexError(f"layer {layer} out of range: the model has layers 0..{self.geometry.num_layers - 1}")
            arr = np.asarray(vec, dtype=np.float32).reshape(-1)
            if arr.shape != (width,):
                raise ValueError(f"the vector at ({site!r}, {layer}) must have {width} entries (the site's width), got {np.shape(vec)}")
            if not np.isfinite(arr).all():
                raise ValueError(f"the vector at ({site!r}, {layer}) is not finite")
            out[(site, layer)] = arr
        if not out:
            raise InvalidOptionError("a steering value needs at least one (site, layer) vector")
        self.vectors = dict(sorted(out.items(), key=lambda kv: (list(SITES).index(kv[0][0]), kv[0][1])))
        normalize_positions(self.positions)  # refused now, not at the first forward pass
        self.model_name = str(self.model_name or "")

    # --- what it is ---------------------------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        """The sites it steers, in the library's site order."""
        return list(dict.fromkeys(site for site, _ in self.vectors))

    def layers(self, site: str) -> list[int]:
        """The layers it steers at ``site``."""
        return [layer for s, layer in self.vectors if s == site]

    def norms(self) -> dict[SiteKey, float]:
        """The length of each vector (what a shift costs, roughly, before the model responds)."""
        return {k: float(np.linalg.norm(v.astype(np.float64))) for k, v in self.vectors.items()}

    # --- arithmetic: steering values compose like the shifts they add -------------------------------------------
    def _check_combinable(self, other: Steering) -> None:
        if not isinstance(other, Steering):
            raise TypeError(f"can only combine a Steering with another, not {type(other).__name__}")
        if other.geometry != self.geometry:
            raise GeometryMismatchError(f"cannot combine steering of two geometries: {self.geometry} and {other.geometry}")
        if not _same_positions(self.positions, other.positions):
            raise InvalidOptionError(f"cannot combine steering with positions {self.positions!r} and {other.positions!r}: "
                                     "choose one (Steering.with_positions)")

    def __add__(self, other: Steering) -> Steering:
        """Both shifts at once: the union of the (site, layer) points, shared points' vectors added."""
        self._check_combinable(other)
        vectors = {k: v.astype(np.float64) for k, v in self.vectors.items()}
        for k, v in other.vectors.items():
            vectors[k] = vectors.get(k, 0.0) + v.astype(np.float64)
        name = self.model_name if self.model_name == other.model_name else f"{self.model_name}+{other.model_name}"
        return Steering(vectors, self.geometry, name, self.positions, {"sum_of": [self.meta, other.meta]})

    def __mul__(self, k: float) -> Steering:
        """``k`` times every vector (a negative ``k`` steers the other way)."""
        k = float(k)
        if not np.isfinite(k):
            raise ValueError(f"the factor must be finite, got {k}")
        return replace(self, vectors={key: k * v for key, v in self.vectors.items()}, meta=dict(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> Steering:
        """The opposite shift: undoes this one when applied with it."""
        return replace(self * -1.0, meta={"negated": dict(self.meta)})

    def __sub__(self, other: Steering) -> Steering:
        return self + (-other)

    def with_positions(self, positions: Positions) -> Steering:
        """A copy that steers at other positions."""
        return replace(self, positions=positions, meta=dict(self.meta))

    def fingerprint(self) -> str:
        """Identifies the exact shift (for caches): model, geometry, positions policy and every vector."""
        h = hashlib.sha256()
        h.update(json.dumps(["steering", self.model_name, self.geometry.to_dict(), _positions_record(self.positions),
                             [list(k) for k in self.vectors]]).encode())
        for v in self.vectors.values():
            h.update(v.tobytes())
        return h.hexdigest()[:16]

    # --- applying -----------------------------------------------------------------------------------------------
    def check_made_for(self, model_name: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
        """Raise InterventionModelError unless this value was made for the model ``model_name`` names (a model of
        the same geometry is still another model); a value that records no model is not checked."""
        check_made_for(self.model_name, model_name, f"the steering {source}" if source is not None else "this steering")

    def check_model(self, model: torch.nn.Module, layout: ModelLayout | None = None) -> ModelLayout:
        """The model's layout; raises GeometryMismatchError unless it has the geometry this value was made for."""
        layout = layout or model_layout(model)
        if layout.geometry != self.geometry:
            run = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            raise GeometryMismatchError(f"this steering was made for {self.model_name or 'a model'} with {self.geometry}; "
                                        f"the model it is used on ({run}) has {layout.geometry}")
        return layout

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module, positions: Positions | None = None) -> Iterator[Steering]:
        """Add every vector at its site while the block runs (``positions``: this value's policy unless given);
        every hook is removed on exit, also after an exception."""
        layout = self.check_model(model)
        tracker = PositionTracker(self.positions if positions is None else positions)
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        for (site, layer), vec in self.vectors.items():
            path, where = layout.site_hook(site, layer)
            shift = torch.from_numpy(vec)
            if where == "input":
                pre[path] = _input_shift_hook(shift, tracker)
            else:
                post[path] = _output_shift_hook(shift, tracker)
        # the tracker sees each forward's inputs (ids, mask, cache) at the base model, before any layer runs
        with module_hooks(model, pre=pre, post=post, pre_kwargs={base_model_path(model): tracker.observe}):
            yield self

    # --- files ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/`` with ``steering.safetensors`` (one tensor ``{site}.{layer}`` per vector) and
        ``steering.json`` (geometry, model, positions, fingerprint, the tensors' sha256)."""
        record = _positions_record(self.positions)
        if record is None:
            raise InvalidOptionError("per-row positions describe one batch, not a steering value: save it with "
                                     "positions 'last', 'all' or a start index (Steering.with_positions)")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(path / TENSOR_FILE, {f"{site}.{layer}": v for (site, layer), v in self.vectors.items()})
        atomic_write_json(path / META_FILE, {
            "format": "iti-steering", "format_version": 1, "iti_version": __version__,
            "model_name": self.model_name, "geometry": self.geometry.to_dict(), "positions": record,
            "vectors": [[site, layer] for site, layer in self.vectors], "fingerprint": self.fingerprint(),
            "tensors_sha256": sha256_file(path / TENSOR_FILE), "meta": self.meta,
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None = None) -> Steering:
        """Read a saved value; a missing, partial or corrupt file is refused naming what is wrong; with ``model``,
        refuse it unless the geometry matches."""
        path = Path(path)
        meta, tensors = read_checked_tensors(path, META_FILE, TENSOR_FILE, "iti-steering", "steering file")
        tensor_path = path / TENSOR_FILE
        try:
            keys = [(str(site), int(layer)) for site, layer in meta["vectors"]]
            missing = [f"{s}.{l}" for s, l in keys if f"{s}.{l}" not in tensors]
            if missing:
                raise FeatureFileError(f"{tensor_path} lacks the vectors {missing} that {META_FILE} lists")
            value = cls({k: tensors[f"{k[0]}.{k[1]}"] for k in keys}, HeadGeometry.from_dict(meta["geometry"]),
                        meta["model_name"], meta["positions"], meta.get("meta", {}))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, FeatureFileError):
                raise
            raise FeatureFileError(f"{path} is an incomplete or invalid steering file: {e}") from None
        if value.fingerprint() != meta.get("fingerprint"):
            raise FeatureFileError(f"{path}: the vectors do not give the fingerprint {META_FILE} records")
        if model is not None:
            value.check_model(model)
        return value


def check_made_for(made_for: str, model_name: str | os.PathLike, what: str) -> None:
    """Raise InterventionModelError unless ``made_for`` (a recorded model name; empty: unknown, not checked) and
    ``model_name`` name the same model (:func:`iti.models.same_model`)."""
    from .errors import InterventionModelError
    from .models import same_model

    if made_for and not same_model(made_for, model_name):
        raise InterventionModelError(
            f"{what} was made for {made_for!r}, not for {str(model_name)!r}: a model of the same geometry has other "
            "weights, so its shift means something else there. Use the model it was made for, or fit one for this model.")


def _positions_record(positions: Positions) -> str | int | None:
    """The JSON form of a policy that describes a value (a name or a start); None for per-row starts."""
    p = normalize_positions(positions)
    return None if isinstance(p, torch.Tensor) else p


def _same_positions(a: Positions, b: Positions) -> bool:
    pa, pb = normalize_positions(a), normalize_positions(b)
    if isinstance(pa, torch.Tensor) or isinstance(pb, torch.Tensor):
        return isinstance(pa, torch.Tensor) and isinstance(pb, torch.Tensor) and torch.equal(pa, pb)
    return pa == pb


class _CastCache:
    """The vector on each (device, dtype) it meets, made once (layers of a ``device_map`` sit on several)."""

    def __init__(self, vec: torch.Tensor):
        self.vec = vec
        self._cache: dict[tuple, torch.Tensor] = {}

    def on(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self.vec.to(device=x.device, dtype=x.dtype)
        return v


def _shifted(x: torch.Tensor, vec: _CastCache, tracker: PositionTracker) -> torch.Tensor:
    mask = tracker.mask_for(x)
    v = vec.on(x)
    return x + v if mask is None else x + mask * v


def _input_shift_hook(vec: torch.Tensor, tracker: PositionTracker):
    cast = _CastCache(vec)

    def hook(module: torch.nn.Module, args: tuple):
        return (_shifted(args[0], cast, tracker), *args[1:])

    return hook


def _output_shift_hook(vec: torch.Tensor, tracker: PositionTracker):
    """Adds to a module's output: a tensor, or the first element of a tuple (decoder blocks of some versions)."""
    cast = _CastCache(vec)

    def hook(module: torch.nn.Module, args: tuple, output):
        if isinstance(output, torch.Tensor):
            return _shifted(output, cast, tracker)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (_shifted(output[0], cast, tracker), *output[1:])
        raise TypeError(f"cannot steer the output of {type(module).__name__}: it is a {type(output).__name__}")

    return hook
