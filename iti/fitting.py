"""Fitting: labelled activations -> a steering value, for any direction method, selector and site.

One recipe serves every method: (probes, when the selector or method asks) -> units -> raw directions -> scale.
:func:`fit_intervention` is its ITI form (``head_out``, returns an :class:`~iti.Intervention` with unit directions
and stds); :func:`fit_steering` returns a :class:`~iti.Steering` at any site; :func:`steering_from_contrast_pairs`
collects the activations of prompt pairs first.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch

from .architectures import HeadGeometry, model_layout
from .collect import collect_head_activations
from .directions import ProbeFit, fit_head_probes, projection_stds, unit
from .errors import EmptyInputError, InvalidOptionError
from .features import FeatureSet
from .intervention import Intervention
from .methods import DirectionMethod, FitData, get_method
from .positions import Positions
from .selectors import TopByProbeAccuracy, Unit, UnitSelector, get_selector
from .steering import Steering

SCALES = ("std", "unit", "raw")
#: the sites whose activations the feature store and the collector provide
FITTABLE_SITES = ("head_out", "resid_post")


def _check_fittable(site: str) -> None:
    if site not in FITTABLE_SITES:
        raise InvalidOptionError(f"fitting at {site!r} is not supported: the collector records {', '.join(FITTABLE_SITES)} "
                                 "(steer attn_out or mlp_out with a Steering made by hand)")


def _site_array(features: FeatureSet | np.ndarray, site: str) -> np.ndarray:
    """Activations as a unit grid ``[N, L, U, D]``: heads at ``head_out``, one unit per layer elsewhere."""
    _check_fittable(site)
    if isinstance(features, FeatureSet):
        if site == "head_out":
            X = features.head_wise
        else:
            if features.layer_wise is None:
                raise InvalidOptionError(f"{features.path} has no layer_wise features: collect them with --layer_wise "
                                         "to fit at resid_post")
            X = features.layer_wise
    else:
        X = features if hasattr(features, "shape") else np.asarray(features)
    want = 4 if site == "head_out" else 3
    if X.ndim != want:
        shape = "[N, layers, heads, head_dim]" if site == "head_out" else "[N, layers, hidden]"
        raise ValueError(f"{site} activations must be {shape}, got shape {tuple(X.shape)}")
    return X if site == "head_out" else X[:, :, None, :]


def fit_units(X: np.ndarray, labels: np.ndarray, groups: np.ndarray, method: DirectionMethod, selector: UnitSelector, *,
              probes: ProbeFit | None = None, val_ratio: float = 0.2, seed: int = 42
              ) -> tuple[list[Unit], np.ndarray, ProbeFit | None]:
    """The chosen units and their raw directions ``[K, D]`` from a unit grid ``X`` ``[N, L, U, D]``; probes are
    fitted (split by group, seeded) when the selector or the method needs them and none are given."""
    if probes is None and (selector.needs_probes or method.needs_probes):
        probes = fit_head_probes(X, labels, groups, val_ratio=val_ratio, seed=seed)
    units = selector.select((X.shape[1], X.shape[2]), None if probes is None else probes.accuracies, seed)
    li = np.array([l for l, _ in units])
    ui = np.array([u for _, u in units])
    coef = None if probes is None else np.asarray(probes.probes.coef_)[li, ui]
    raw = method.directions(FitData(X[:, li, ui], labels, groups, seed, coef))
    return units, raw, probes


def scale_directions(raw: np.ndarray, scale: str, tune: np.ndarray, units: list[Unit]) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions and per-unit lengths: the std of ``tune`` projected on the direction (``"std"``), 1
    (``"unit"``) or the raw direction's norm (``"raw"``)."""
    directions = unit(raw)
    if scale == "std":
        return directions, projection_stds(tune, units, directions)
    if scale == "unit":
        return directions, np.ones(len(units))
    if scale == "raw":
        return directions, np.linalg.norm(raw, axis=1)
    raise InvalidOptionError(f"scale: one of {', '.join(SCALES)}, got {scale!r}")


def _feature_set_defaults(features, labels, groups, geometry, model_name):
    """What a FeatureSet brings with it (labels, group ids, geometry, model name) where the caller gave none."""
    if not isinstance(features, FeatureSet):
        return labels, groups, geometry, model_name
    return (features.labels if labels is None else labels, features.group_ids if groups is None else groups,
            geometry or features.geometry, model_name or features.manifest["model"]["name"])


def _labels_groups(n: int, labels, groups) -> tuple[np.ndarray, np.ndarray]:
    if labels is None:
        raise ValueError("labels are needed with an array of activations")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != n:
        raise ValueError(f"{n} activation rows but {len(labels)} labels")
    return labels, (np.arange(n) if groups is None else np.asarray(groups))


def _selector_argument(selector: Any, head_choice: Any) -> Any:
    """``selector``, or ``head_choice`` (its older name) when only that was given."""
    if head_choice is None:
        return selector
    if not (isinstance(selector, str) and selector == "probe_accuracy"):
        raise InvalidOptionError("give selector= or head_choice= (its older name), not both")
    return head_choice


def fit_intervention(
    features: FeatureSet | np.ndarray,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    *,
    num_heads: int = 48,
    method: str | DirectionMethod = "mass_mean",
    selector: str | Sequence[tuple[int, int]] | UnitSelector = "probe_accuracy",
    alpha: float = 15.0,
    std_from: FeatureSet | np.ndarray | None = None,
    probes: ProbeFit | None = None,
    val_ratio: float = 0.2,
    seed: int = 42,
    geometry: HeadGeometry | None = None,
    model_name: str | None = None,
    meta: dict[str, Any] | None = None,
    scale: str = "std",
    head_choice: str | Sequence[tuple[int, int]] | UnitSelector | None = None,
) -> Intervention:
    """An intervention from labelled head activations: heads, unit directions, projection stds, alpha.

    ``features``: a :class:`FeatureSet` (labels, groups, geometry and model name come with it) or an array
    ``[N, layers, heads, head_dim]`` with ``labels`` (1 = the side to steer toward) and optionally ``groups`` (rows
    of one group, e.g. one question, stay on one side of the probe split; default every row its own group).
    ``selector``: ``"probe_accuracy"`` (the ``num_heads`` heads whose probes score best on held-out groups),
    ``"random"`` (a seeded draw), an explicit list of (layer, head), or any :mod:`iti.selectors` selector
    (``head_choice``: its older name, still accepted).
    ``method``: a name from :mod:`iti.methods` (``"mass_mean"``, ``"probe"``, ``"random"``, ``"mean_diff"``,
    ``"pca_diff"``) or a method instance. The shift of each head is ``alpha x std x direction``, the std measured on
    ``std_from`` (default: the same rows) projected on the direction (``scale="std"``, ITI's; ``"unit"`` makes it
    1 and ``"raw"`` the raw direction's norm). ``probes`` reuses probes fitted before. With an array and no
    ``geometry``, the geometry is read off the array's shape (``num_kv_heads = heads``, ``hidden_size = heads x
    head_dim``); pass the model's (``iti.model_layout(model).geometry``) to apply it.
    """
    labels, groups, geometry, model_name = _feature_set_defaults(features, labels, groups, geometry, model_name)
    X = _site_array(features, "head_out")
    if geometry is None:
        _, L, H, D = X.shape
        geometry = HeadGeometry(num_layers=L, num_heads=H, num_kv_heads=H, head_dim=D, hidden_size=H * D)
    labels, groups = _labels_groups(len(X), labels, groups)
    chosen_method = get_method(method)
    selector = _selector_argument(selector, head_choice)
    chosen_selector = get_selector(selector, num_heads)
    units, raw, _ = fit_units(X, labels, groups, chosen_method, chosen_selector, probes=probes, val_ratio=val_ratio, seed=seed)
    for l, h in units:
        geometry.check_head(l, h)
    tune = X if std_from is None else _site_array(std_from, "head_out")
    directions, stds = scale_directions(raw, scale, tune, units)
    method_name = chosen_method.name
    choice = selector if isinstance(selector, str) else chosen_selector.name or "explicit"
    info = {"method": method_name, "selector": choice, "seed": seed, "num_heads": len(units)} if meta is None else meta
    return Intervention(units, directions, stds, alpha, model_name or "", geometry, info)


def fit_steering(
    features: FeatureSet | np.ndarray,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    *,
    site: str = "head_out",
    method: str | DirectionMethod = "mass_mean",
    selector: UnitSelector | str | Sequence | None = None,
    alpha: float = 1.0,
    scale: str | None = None,
    std_from: FeatureSet | np.ndarray | None = None,
    probes: ProbeFit | None = None,
    val_ratio: float = 0.2,
    seed: int = 42,
    geometry: HeadGeometry | None = None,
    model_name: str | None = None,
    positions: Positions = "last",
    meta: dict[str, Any] | None = None,
) -> Steering:
    """A :class:`Steering` at ``site`` from labelled activations (``[N, L, H, D]`` at ``head_out``, ``[N, L,
    hidden]`` at ``resid_post``, or a FeatureSet holding them). ``selector``: default the 48 best heads by probe
    accuracy at ``head_out`` and the one best layer at ``resid_post``; ``scale``: default the method's own (ITI's
    methods ``"std"``, CAA ``"raw"``, RepE ``"unit"``). Each chosen unit's vector is ``alpha x length x
    direction``."""
    labels, groups, geometry, model_name = _feature_set_defaults(features, labels, groups, geometry, model_name)
    chosen_method = get_method(method)
    scale = scale or chosen_method.scale
    if site == "head_out":
        sel = selector if selector is not None else TopByProbeAccuracy(48)
        inter = fit_intervention(features, labels, groups, method=chosen_method, selector=sel,
                                 num_heads=getattr(sel, "k", 48), alpha=alpha,
                                 std_from=std_from, probes=probes, val_ratio=val_ratio, seed=seed, geometry=geometry,
                                 model_name=model_name, scale=scale)
        info = {**inter.meta, "scale": scale} if meta is None else meta
        return Steering(inter.to_steering(positions).vectors, inter.geometry, inter.model_name, positions, info)
    X = _site_array(features, site)
    if geometry is None:
        raise InvalidOptionError(f"fitting at {site!r} from an array needs the model's geometry: "
                                 "geometry=iti.model_layout(model).geometry")
    if X.shape[1] != geometry.num_layers or X.shape[3] != geometry.hidden_size:
        raise ValueError(f"{site} activations {tuple(X.shape[:2]) + (X.shape[3],)} do not match the geometry's "
                         f"{geometry.num_layers} layers x hidden size {geometry.hidden_size}")
    labels, groups = _labels_groups(len(X), labels, groups)
    sel = get_selector(selector if selector is not None else TopByProbeAccuracy(1), 1)
    units, raw, _ = fit_units(X, labels, groups, chosen_method, sel, probes=probes, val_ratio=val_ratio, seed=seed)
    tune = X if std_from is None else _site_array(std_from, site)
    directions, lengths = scale_directions(raw, scale, tune, units)
    vectors = {(site, l): float(alpha) * float(n) * d.astype(np.float64) for (l, _), d, n in zip(units, directions, lengths)}
    info = {"method": chosen_method.name, "selector": sel.name, "layers": [l for l, _ in units], "scale": scale,
            "alpha": float(alpha), "seed": seed} if meta is None else meta
    return Steering(vectors, geometry, model_name or "", positions, info)


def _contrast_activations(model: torch.nn.Module, tokenizer: Any, positive_prompts: Sequence[str],
                          negative_prompts: Sequence[str], site: str, batch_size: int, progress: bool
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last-token activations at ``site`` of the positive then the negative prompts, labels (1 = positive) and
    groups (pair index when the lists pair up, else one group per prompt)."""
    from .options import refuse

    for arg, given in (("positive_prompts", positive_prompts), ("negative_prompts", negative_prompts)):
        if isinstance(given, (str, bytes)):  # a sequence too: each character would become a one-letter prompt
            shown = repr(given[:60]) + ("..." if len(given) > 60 else "")
            raise refuse(arg, "a list of prompts, not one string (wrap a single prompt in a list)", shown=shown)
    if not positive_prompts or not negative_prompts:
        raise EmptyInputError("contrast pairs need at least one positive and one negative prompt")
    _check_fittable(site)
    prompts = list(positive_prompts) + list(negative_prompts)
    acts = collect_head_activations(model, tokenizer, prompts, batch_size=batch_size, progress=progress,
                                    residual=site == "resid_post")
    X = cast(torch.Tensor, acts.heads if site == "head_out" else acts.residual).numpy()
    labels = np.r_[np.ones(len(positive_prompts), dtype=np.int64), np.zeros(len(negative_prompts), dtype=np.int64)]
    if len(positive_prompts) == len(negative_prompts):
        groups = np.r_[np.arange(len(positive_prompts)), np.arange(len(negative_prompts))]
    else:
        groups = np.arange(len(prompts))
    return X, labels, groups


def _model_name(model: torch.nn.Module) -> str:
    return str(getattr(model.config, "_name_or_path", "") or getattr(model.config, "model_type", "model"))


def intervention_from_contrast_pairs(model: torch.nn.Module, tokenizer: Any, positive_prompts: Sequence[str],
                                     negative_prompts: Sequence[str], *, num_heads: int = 8, method: str = "mass_mean",
                                     selector: str | Sequence[tuple[int, int]] = "probe_accuracy", alpha: float = 5.0,
                                     val_ratio: float = 0.2, seed: int = 0, batch_size: int = 16,
                                     progress: bool = False, head_choice: str | Sequence[tuple[int, int]] | None = None
                                     ) -> Intervention:
    """:meth:`iti.Intervention.from_contrast_pairs`: probe every head on the pairs' last tokens, shift the best."""
    X, labels, groups = _contrast_activations(model, tokenizer, positive_prompts, negative_prompts, "head_out",
                                              batch_size, progress)
    return fit_intervention(X, labels, groups, num_heads=num_heads, method=method, selector=_selector_argument(selector, head_choice), alpha=alpha,
                            val_ratio=val_ratio, seed=seed, geometry=model_layout(model).geometry, model_name=_model_name(model),
                            meta={"from": "contrast_pairs", "pairs": int(len(positive_prompts)), "method": method,
                                  "num_heads": num_heads, "seed": seed})


def _from_contrast_pairs(cls, model: torch.nn.Module, tokenizer: Any, positive_prompts: Sequence[str],
                         negative_prompts: Sequence[str], **options: Any) -> Intervention:
    """Steer toward a concept named by examples: :func:`intervention_from_contrast_pairs` (the options are its)."""
    return intervention_from_contrast_pairs(model, tokenizer, positive_prompts, negative_prompts, **options)


# attached here, so that the value's module needs nothing of fitting's (importing iti imports this module)
Intervention.from_contrast_pairs = classmethod(_from_contrast_pairs)  # type: ignore[assignment]


def steering_from_contrast_pairs(model: torch.nn.Module, tokenizer: Any, positive_prompts: Sequence[str],
                                 negative_prompts: Sequence[str], *, site: str = "resid_post",
                                 method: str | DirectionMethod = "mean_diff", selector: UnitSelector | Sequence | None = None,
                                 alpha: float = 1.0, scale: str | None = None, positions: Positions = "all",
                                 val_ratio: float = 0.2, seed: int = 0, batch_size: int = 16,
                                 progress: bool = False) -> Steering:
    """A steering value from prompt pairs (``positive_prompts[i]`` against ``negative_prompts[i]``), read at each
    prompt's last token: by default CAA (the mean difference on the residual stream, applied at every position as
    Rimsky et al. do) at the one layer whose probe separates the pairs best; any method, selector and site of
    :func:`fit_steering`."""
    X, labels, groups = _contrast_activations(model, tokenizer, positive_prompts, negative_prompts, site, batch_size, progress)
    return fit_steering(X, labels, groups, site=site, method=method, selector=selector, alpha=alpha, scale=scale,
                        val_ratio=val_ratio, seed=seed, geometry=model_layout(model).geometry,
                        model_name=_model_name(model), positions=positions)
