"""An ITI intervention: a constant shift of chosen heads' outputs, applied with a context manager.

For each chosen head (layer l, head h) the o_proj input slice of that head is shifted by
``alpha * std * direction`` at the selected positions. Positions:

- ``"last"``: the last *position* of each forward pass (the last column of the batch); inside ``generate`` this
  is the last prompt token and then every generated token, exactly once each, with or without the KV cache
  (without the cache, every re-computation shifts the positions from the last prompt token on). Batches must be
  left-padded (as the tokenizer from :func:`iti.load_model` pads): a forward whose ``attention_mask`` marks the
  last column of some row as padding is refused with :class:`~iti.errors.PaddingError`, since the shift would
  land on a pad token. This differs from ``positions="last"`` when *capturing* activations
  (:class:`iti.HeadTrace`, :func:`iti.collect_head_activations`), which takes each row's last non-pad token and
  so works with either padding side.
- ``"all"``: every position (what a baked-in bias does).
- an ``int`` (of any integer type, >= 0): every absolute position from that index on (``positions=len(prompt)`` =
  the answer tokens only).
- a tensor, numpy array, list or tuple ``[batch]``: a start index per row.

Anything else (a float, a bool, a negative start, another string) is refused with
:class:`~iti.errors.InvalidOptionError`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.numpy import load_file

from ._version import __version__
from .architectures import HeadGeometry, model_layout
from .collect import collect_head_activations
from .directions import DIRECTION_METHODS, HEAD_CHOICES, ProbeFit, fit_head_probes, projection_stds, random_heads, top_heads, unit
from .errors import EmptyInputError, FeatureFileError, GeometryMismatchError, HeadIndexError, InvalidOptionError, PaddingError
from .features import FeatureSet
from .hooks import module_hooks
from .io import atomic_save_safetensors, atomic_write_json, read_json, read_safetensors_header, sha256_file
from .kv_cache import passed_cache

InterventionPositions = str | int | np.integer | torch.Tensor | Sequence[int] | np.ndarray

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

    # --- one call from examples ----------------------------------------------------------------------------------
    @classmethod
    def from_contrast_pairs(cls, model: torch.nn.Module, tokenizer: Any, positive_prompts: Sequence[str],
                            negative_prompts: Sequence[str], *, num_heads: int = 8, method: str = "mass_mean",
                            head_choice: str | Sequence[tuple[int, int]] = "probe_accuracy", alpha: float = 5.0,
                            val_ratio: float = 0.2, seed: int = 0, batch_size: int = 16, progress: bool = False) -> Intervention:
        """Steer toward a concept named by examples: collect the last-token head outputs of each prompt, probe every
        head (positive vs negative, split by pair so that the two sides of a pair stay together), pick the
        ``num_heads`` best, and shift them along the mass-mean direction (see :func:`fit_intervention`
        for the options). With lists of equal length, ``positive_prompts[i]`` and ``negative_prompts[i]`` form a
        pair."""
        from .options import refuse

        for arg, given in (("positive_prompts", positive_prompts), ("negative_prompts", negative_prompts)):
            if isinstance(given, (str, bytes)):  # a sequence too: each character would become a one-letter prompt
                shown = repr(given[:60]) + ("..." if len(given) > 60 else "")
                raise refuse(arg, "a list of prompts, not one string (wrap a single prompt in a list)", shown=shown)
        if not positive_prompts or not negative_prompts:
            raise EmptyInputError("from_contrast_pairs needs at least one positive and one negative prompt")
        prompts = list(positive_prompts) + list(negative_prompts)
        X = cast(torch.Tensor, collect_head_activations(model, tokenizer, prompts, batch_size=batch_size, progress=progress).heads).numpy()
        labels = np.r_[np.ones(len(positive_prompts), dtype=np.int64), np.zeros(len(negative_prompts), dtype=np.int64)]
        if len(positive_prompts) == len(negative_prompts):
            groups = np.r_[np.arange(len(positive_prompts)), np.arange(len(negative_prompts))]
        else:
            groups = np.arange(len(prompts))
        name = str(getattr(model.config, "_name_or_path", "") or getattr(model.config, "model_type", "model"))
        return fit_intervention(X, labels, groups, num_heads=num_heads, method=method, head_choice=head_choice, alpha=alpha,
                                val_ratio=val_ratio, seed=seed, geometry=model_layout(model).geometry, model_name=name,
                                meta={"from": "contrast_pairs", "pairs": int(len(positive_prompts)), "method": method,
                                      "num_heads": num_heads, "seed": seed})

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
        from .errors import InterventionModelError
        from .models import same_model

        if self.model_name and not same_model(self.model_name, model_name):
            what = f"the intervention {source}" if source is not None else "this intervention"
            raise InterventionModelError(
                f"{what} was made for {self.model_name!r}, not for {str(model_name)!r}: a model of the same geometry "
                "has other weights, so its shift means something else there. Use the model it was made for, or fit "
                "one for this model.")

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise GeometryMismatchError unless the model has the head geometry this intervention was made for."""
        g = model_layout(model).geometry
        if g != self.geometry:
            run = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            raise GeometryMismatchError(
                f"this intervention was made for {self.model_name} with {self.geometry}; the model it is used on "
                f"({run}) has {g}"
            )

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module, positions: InterventionPositions = "last") -> Iterator[Intervention]:
        """Shift the chosen heads while the block runs; every hook is removed on exit.

        ``positions="last"`` means the last column of each forward pass (see the module docstring), not each row's
        last non-pad token as when capturing: a right-padded batch is refused with :class:`PaddingError` at its
        forward pass. Pad on the left (``tokenizer.padding_side = "left"``, what :func:`iti.load_model` returns).
        """
        layout = model_layout(model)
        if layout.geometry != self.geometry:
            self.check_model(model)
        tracker = _PositionTracker(positions)
        shifts = {l: torch.from_numpy(v) for l, v in self.layer_shifts().items()}
        pre = {layout.head_out_paths[l]: _shift_hook(vec, tracker) for l, vec in shifts.items()}
        # the tracker sees each forward's inputs (ids, mask, cache) at the base model, before any layer runs
        with module_hooks(model, pre=pre, pre_kwargs={_base_model_path(model): tracker.observe}):
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
        meta = read_json(path / META_FILE, "intervention file")
        if not isinstance(meta, dict) or meta.get("format") != "iti-intervention":
            raise FeatureFileError(f"{path / META_FILE} is not an iti intervention file")
        tensor_path = path / TENSOR_FILE
        read_safetensors_header(tensor_path)
        if sha256_file(tensor_path) != meta.get("tensors_sha256"):
            raise FeatureFileError(f"{tensor_path} is corrupt: its sha256 differs from the one in {META_FILE}")
        try:
            tensors = load_file(str(tensor_path))
            inter = cls(heads=[tuple(h) for h in meta["heads"]], directions=tensors["directions"], stds=tensors["stds"],
                        alpha=meta["alpha"], model_name=meta["model_name"], geometry=HeadGeometry.from_dict(meta["geometry"]),
                        meta=meta.get("meta", {}))
        except (KeyError, TypeError) as e:
            raise FeatureFileError(f"{path} is an incomplete intervention: missing {e}") from None
        if model is not None:
            inter.check_model(model)
        return inter


def _base_model_path(model: torch.nn.Module) -> str:
    """The module path of ``model.base_model`` ("model" for Llama, "transformer" for GPT-2, "" if it is the model)."""
    base = model.base_model
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and getattr(model, prefix, None) is base:
        return prefix
    return next((name for name, module in model.named_modules() if module is base), "")


class _PositionTracker:
    """Works out, before each forward pass, which positions of the current input get the shift."""

    def __init__(self, positions: InterventionPositions):
        self.positions = _normalize_positions(positions)
        self.mask: torch.Tensor | None = None  # [batch, seq] bool, or None = every position
        self._prompt: torch.Tensor | None = None
        self._start = 0
        self._per_device: dict[tuple, torch.Tensor] = {}

    def observe(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = cast(torch.Tensor, ids if ids is not None else embeds)
        batch, seq = int(ref.shape[0]), int(ref.shape[1])
        past = _past_length(kwargs)
        absolute = torch.arange(past, past + seq)
        self._per_device = {}
        p = self.positions
        if isinstance(p, str) and p == "all":
            self.mask = None
            return
        if isinstance(p, int):
            self.mask = (absolute >= p).expand(batch, seq)
            return
        if isinstance(p, torch.Tensor):
            start = p.reshape(-1).cpu()
            if start.shape[0] != batch:
                raise ValueError(f"positions has {start.shape[0]} start indices but the batch has {batch} rows")
            self.mask = absolute[None, :] >= start[:, None]
            return
        _refuse_right_padding(kwargs.get("attention_mask"))
        # "last": a new prompt shifts its last token; a continuation (cached step, or a re-computation that
        # extends the recorded prompt) shifts everything from the last prompt token on.
        continuing = past > 0 or (
            ids is not None and self._prompt is not None and ids.shape[0] == self._prompt.shape[0]
            and seq > self._prompt.shape[1] and torch.equal(ids[:, : self._prompt.shape[1]].cpu(), self._prompt)
        )
        if not continuing:
            self._prompt = ids.detach().cpu() if ids is not None else None
            self._start = past + seq - 1
        self.mask = (absolute >= self._start).expand(batch, seq)

    def mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mask is None:
            return None
        key = (x.device, x.dtype)
        m = self._per_device.get(key)
        if m is None:
            if self.mask.shape != x.shape[:2]:
                raise RuntimeError(f"intervention positions {tuple(self.mask.shape)} do not match the head input {tuple(x.shape[:2])}")
            m = self._per_device[key] = self.mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        return m


_POSITIONS_HELP = "'last', 'all', a start index (an int >= 0) or one start index per row (a 1-d sequence or tensor)"


def _normalize_positions(positions: Any) -> str | int | torch.Tensor:
    """``"last"``/``"all"``, a non-negative Python int, or a 1-d CPU int64 tensor of per-row starts. Integers of any
    integer type (numpy, a 0-d tensor) are starts; lists, tuples and numpy arrays are per-row starts. Anything else
    (a bool, a float, another string, a negative start) is refused rather than read as something it is not."""
    if isinstance(positions, str):
        if positions not in ("last", "all"):
            raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}, got {positions!r}")
        return positions
    if isinstance(positions, (bool, np.bool_)):
        raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}, got the bool {positions!r}")
    if isinstance(positions, (list, tuple, np.ndarray, torch.Tensor)):
        arr = positions.detach().cpu().numpy() if isinstance(positions, torch.Tensor) else np.asarray(positions)
        if arr.ndim == 0:
            return _normalize_positions(arr.item())
        if arr.ndim != 1 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_)):
            raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}; got a {arr.dtype} array of shape {arr.shape}")
        if (arr < 0).any():
            raise InvalidOptionError(f"positions: start indices must be >= 0, got {arr.tolist()}")
        return torch.from_numpy(arr.astype(np.int64))
    if isinstance(positions, (int, np.integer)):
        if positions < 0:
            raise InvalidOptionError(f"positions: a start index must be >= 0, got {int(positions)} (a negative start would "
                                     "shift every position; pass 'all' for that)")
        return int(positions)
    raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}, got {type(positions).__name__} {positions!r}")


def _refuse_right_padding(attention_mask: torch.Tensor | None) -> None:
    """positions="last" shifts the last column; a row that ends in padding there would get the shift on a pad token."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2 or attention_mask.shape[1] == 0:
        return
    padded = (attention_mask[:, -1] == 0).nonzero().reshape(-1).tolist()
    if padded:
        raise PaddingError(
            f"positions='last' shifts the last position of each forward pass, but row(s) {padded[:10]} of this batch "
            f"({attention_mask.shape[0]} rows) end in padding (right padding), so the shift would land on a pad token "
            "and generation would continue after the pads. Pad on the left: tokenizer.padding_side = 'left' "
            "(iti.load_model returns a tokenizer set up so), or steer one prompt at a time."
        )


def _past_length(kwargs: dict) -> int:
    cache_position = kwargs.get("cache_position")
    if cache_position is not None and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    past = passed_cache(kwargs)
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple of (key, value) per layer
        return int(past[0][0].shape[-2])
    except (TypeError, IndexError):
        return 0


def _shift_hook(vec: torch.Tensor, tracker: _PositionTracker):
    cache: dict[tuple, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: tuple):
        x = args[0]
        key = (x.device, x.dtype)
        v = cache.get(key)
        if v is None:
            v = cache[key] = vec.to(device=x.device, dtype=x.dtype)
        mask = tracker.mask_for(x)
        shifted = x + v if mask is None else x + mask * v
        return (shifted, *args[1:])

    return hook


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
