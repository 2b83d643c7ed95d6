"""lm-evaluation-harness's ``steered`` model: a ``.pt`` of steering vectors added at named modules.

``lm_eval --model steered --model_args pretrained=<model>,steer_path=<file.pt>`` reads a dict ``{hookpoint: {
"steering_vector", "steering_coefficient", "action", "bias", "head_index"}}`` and, for ``action="add"``, adds
``steering_coefficient * steering_vector`` to the hookpoint module's output at every position (iti's
``positions="all"``; a module that returns a tuple gets it on its first element). Hookpoints are module names inside
``model.base_model`` (``layers.3.self_attn.o_proj`` for Llama, ``h.3.attn.c_proj`` for GPT-2), not paths from the top
model: lm-eval looks them up in ``model.base_model.named_modules()``.

We write one ``add`` entry per (site, layer) of a :class:`~iti.Steering` at the module whose output the site is
(:mod:`iti.interop.shifts`): ``attn_out`` at the head-output module, ``mlp_out`` at the MLP, ``resid_post`` at the
decoder block, and an ITI head shift as ``W_o @ shift`` at the head-output module; plain tensors, floats and strings
(``torch.save``: the harness's format; we read such files with ``weights_only=True``). Reading gives the steering value
as the file holds it (:func:`load_lm_eval_steering`); :func:`import_lm_eval` solves it into ITI's head shifts where
every hookpoint is a head-output module. Hookpoints that are no site of the model, ``clamp`` actions (they depend on
the activation), biases and head indices are refused with :class:`~iti.errors.SteeringFileError`.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..architectures import model_layout, site_width
from ..errors import InexpressibleExportError, SteeringFileError
from ..intervention import Intervention
from ..io import atomic_path
from ..positions import base_model_path
from ..steering import SiteKey, Steering
from .files import refuse_existing
from .shifts import intervention_from_steering, model_name_of, module_output_vectors, output_sites, steering_from_outputs

STEERING_KEYS = ("steering_vector", "steering_coefficient", "action", "bias", "head_index")


def _hookpoint_name(model: torch.nn.Module, path: str) -> str:
    base = base_model_path(model)
    if base and not path.startswith(base + "."):
        raise InexpressibleExportError(f"lm-eval finds hookpoints inside model.base_model ({base}), and the module {path} "
                                       "is not in it")
    return path[len(base) + 1:] if base else path


def site_hookpoints(model: torch.nn.Module) -> dict[str, SiteKey]:
    """Every lm-eval hookpoint that is a steering site of ``model``: ``{hookpoint: (site, layer)}``."""
    return {_hookpoint_name(model, path): key for path, key in output_sites(model).items()}


def hookpoints(model: torch.nn.Module) -> list[str]:
    """The lm-eval hookpoint of every layer's head-output module (its name inside ``model.base_model``)."""
    return [_hookpoint_name(model, path) for path in model_layout(model).head_out_paths]


def steering_config(model: torch.nn.Module, value: Intervention | Steering) -> dict[str, dict[str, Any]]:
    """The dict lm-eval's steered model reads: one ``add`` per (site, layer) at the module whose output it is."""
    names = {key: point for point, key in site_hookpoints(model).items()}
    return {names[key]: {"steering_vector": torch.from_numpy(vec).clone(), "steering_coefficient": 1.0, "action": "add",
                         "bias": None, "head_index": None}
            for key, vec in module_output_vectors(model, value).items()}


def export_lm_eval(model: torch.nn.Module, value: Intervention | Steering, path: str | os.PathLike, *, force: bool = False,
                   model_name: str | os.PathLike | None = None) -> Path:
    """Write the steering ``.pt`` of ``value`` (an intervention or any steering) for ``lm_eval --model steered``
    (module docstring).

    ``model_name``: the name or directory ``model`` was loaded from (``iti export`` passes ``--model_name``); a value
    made for another model (``check_made_for``, the check of ``iti faithfulness``) is then refused with
    :class:`~iti.errors.InterventionModelError`, also when the geometry fits."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise SteeringFileError(f"lm-eval reads steering vectors from a .pt or .pth file, not {path.name!r}")
    if model_name is not None:
        value.check_made_for(model_name)
    refuse_existing([path], force)
    config = steering_config(model, value)
    with atomic_path(path) as tmp:
        torch.save(config, tmp)
    return path


def _entries(raw: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(raw, dict):
        if all(isinstance(v, dict) for v in raw.values()):
            return [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, (list, tuple)) and all(isinstance(e, dict) and "hookpoint" in e for e in raw):
        return [(str(e["hookpoint"]), e) for e in raw]
    raise SteeringFileError(f"{path} is not an lm-eval steering file: expected {{hookpoint: {{steering_vector, "
                            "steering_coefficient, action, ...}}}}")


def _coefficient(raw: Any, path: Path, hook: str) -> float:
    """The steering coefficient as a float: a number or a one-element tensor (lm-eval multiplies the vector by it),
    refused with :class:`SteeringFileError` otherwise (a string such as ``"2"`` would fail inside lm-eval too)."""
    value = raw.item() if isinstance(raw, torch.Tensor) and raw.numel() == 1 else raw
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SteeringFileError(f"{path}: {hook}'s steering_coefficient is {raw!r}, not a number")
    return float(value)


def load_lm_eval_steering(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Steering:
    """Read an lm-eval steering ``.pt`` of ``add`` entries as the :class:`Steering` it is for ``model``: each
    hookpoint's site and layer, the vector times its coefficient, at every position. No solving."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SteeringFileError(f"steering file {path} does not exist") from None
    except Exception as e:  # needs code to unpickle, truncated, not a torch file
        raise SteeringFileError(f"{path} cannot be read as plain tensors ({type(e).__name__}: {str(e)[:200]})") from None
    points = site_hookpoints(model)
    geometry = model_layout(model).geometry
    vectors: dict[SiteKey, np.ndarray] = {}
    for hook, entry in _entries(raw, path):
        if hook not in points:
            examples = ", ".join(repr(p) for p in list(points)[:3])
            raise SteeringFileError(f"{path}: hookpoint {hook!r} is no steering site of this model; iti reads the head-output "
                                    f"module, the MLP and the decoder block of each layer (names inside model.base_model, "
                                    f"such as {examples})")
        action = entry.get("action", "add")
        if action != "add":
            raise SteeringFileError(f"{path}: {hook} has action {action!r}; only 'add' is a constant shift iti can represent")
        if entry.get("bias") is not None or entry.get("head_index") is not None:
            raise SteeringFileError(f"{path}: {hook} has a bias or head_index, which lm-eval's 'add' does not take")
        vec = entry.get("steering_vector")
        if not isinstance(vec, torch.Tensor):
            raise SteeringFileError(f"{path}: {hook} has no steering_vector tensor")
        vec = vec.detach().float().reshape(-1)
        key = points[hook]
        width = site_width(geometry, key[0])
        if vec.numel() != width:
            raise SteeringFileError(f"{path}: {hook}'s steering_vector has {vec.numel()} values, the module outputs {width}")
        coef = _coefficient(entry.get("steering_coefficient", 1.0), path, hook)
        if not math.isfinite(coef) or not torch.isfinite(vec).all():
            raise SteeringFileError(f"{path}: {hook} has a non-finite steering vector or coefficient")
        vectors[key] = vectors.get(key, 0.0) + coef * vec.double().numpy()
    if not vectors:
        raise SteeringFileError(f"{path} holds no steering entries")
    meta = {"imported_from": "lm-eval steered", "path": str(path), "positions": "all"}
    return steering_from_outputs(model, vectors, model_name=model_name or model_name_of(model), meta=meta, source=str(path))


def import_lm_eval(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Intervention:
    """Read an lm-eval steering ``.pt`` of ``add`` entries on head-output modules as an iti :class:`Intervention`
    for ``model`` with the same effect at every position (solved back to head shifts)."""
    steering = load_lm_eval_steering(path, model, model_name=model_name)
    return intervention_from_steering(model, steering, model_name=model_name, source=str(path))
