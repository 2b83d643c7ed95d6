"""lm-evaluation-harness's ``steered`` model: a ``.pt`` of steering vectors added at named modules.

``lm_eval --model steered --model_args pretrained=<model>,steer_path=<file.pt>`` reads a dict ``{hookpoint: {
"steering_vector", "steering_coefficient", "action", "bias", "head_index"}}`` and, for ``action="add"``, adds
``steering_coefficient * steering_vector`` to the hookpoint module's output at every position (iti's
``positions="all"``). Hookpoints are module names inside ``model.base_model`` (``layers.3.self_attn.o_proj`` for
Llama, ``h.3.attn.c_proj`` for GPT-2), not paths from the top model: lm-eval looks them up in
``model.base_model.named_modules()``. We write one ``add`` entry per intervened layer with the vector
``W_o @ shift`` on the head-output module, as plain tensors, floats and strings (``torch.save``: the harness's
format; we read such files with ``weights_only=True``). Reading refuses hookpoints that are not a head-output
module of the model, ``clamp`` actions (they depend on the activation), biases and head indices, with
:class:`~iti.errors.SteeringFileError`.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..architectures import model_layout
from ..errors import InexpressibleExportError, SteeringFileError
from ..intervention import Intervention
from ..io import atomic_path
from ..positions import base_model_path
from .files import refuse_existing
from .shifts import head_out_weight, intervention_from_output_shifts, model_name_of, output_shifts

STEERING_KEYS = ("steering_vector", "steering_coefficient", "action", "bias", "head_index")


def hookpoints(model: torch.nn.Module) -> list[str]:
    """The lm-eval hookpoint of every layer's head-output module (its name inside ``model.base_model``)."""
    base = base_model_path(model)
    out = []
    for path in model_layout(model).head_out_paths:
        if base and not path.startswith(base + "."):
            raise InexpressibleExportError(f"lm-eval finds hookpoints inside model.base_model ({base}), and the head-output "
                                           f"module {path} is not in it")
        out.append(path[len(base) + 1:] if base else path)
    return out


def steering_config(model: torch.nn.Module, intervention: Intervention) -> dict[str, dict[str, Any]]:
    """The dict lm-eval's steered model reads: one ``add`` of ``W_o @ shift`` per intervened layer."""
    points = hookpoints(model)
    return {points[layer]: {"steering_vector": torch.from_numpy(vec).clone(), "steering_coefficient": 1.0, "action": "add",
                            "bias": None, "head_index": None}
            for layer, vec in sorted(output_shifts(model, intervention).items())}


def export_lm_eval(model: torch.nn.Module, intervention: Intervention, path: str | os.PathLike, *, force: bool = False,
                   model_name: str | os.PathLike | None = None) -> Path:
    """Write the steering ``.pt`` of ``intervention`` for ``lm_eval --model steered`` (module docstring).

    ``model_name``: the name or directory ``model`` was loaded from (``iti export`` passes ``--model_name``); an
    intervention made for another model (:meth:`~iti.intervention.Intervention.check_made_for`, the check of ``iti
    faithfulness``) is then refused with :class:`~iti.errors.InterventionModelError`, also when the geometry fits."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise SteeringFileError(f"lm-eval reads steering vectors from a .pt or .pth file, not {path.name!r}")
    if model_name is not None:
        intervention.check_made_for(model_name)
    refuse_existing([path], force)
    config = steering_config(model, intervention)
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


def import_lm_eval(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Intervention:
    """Read an lm-eval steering ``.pt`` of ``add`` entries on head-output modules as an iti :class:`Intervention`
    for ``model`` with the same effect at every position."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SteeringFileError(f"steering file {path} does not exist") from None
    except Exception as e:  # needs code to unpickle, truncated, not a torch file
        raise SteeringFileError(f"{path} cannot be read as plain tensors ({type(e).__name__}: {str(e)[:200]})") from None
    points = {p: l for l, p in enumerate(hookpoints(model))}
    shifts: dict[int, np.ndarray] = {}
    for hook, entry in _entries(raw, path):
        if hook not in points:
            example = next(iter(points))
            raise SteeringFileError(f"{path}: hookpoint {hook!r} is not a head-output module of this model; iti reads "
                                    f"hookpoints such as {example!r} (names inside model.base_model, one per layer)")
        action = entry.get("action", "add")
        if action != "add":
            raise SteeringFileError(f"{path}: {hook} has action {action!r}; only 'add' is a constant shift iti can represent")
        if entry.get("bias") is not None or entry.get("head_index") is not None:
            raise SteeringFileError(f"{path}: {hook} has a bias or head_index, which lm-eval's 'add' does not take")
        vec = entry.get("steering_vector")
        if not isinstance(vec, torch.Tensor):
            raise SteeringFileError(f"{path}: {hook} has no steering_vector tensor")
        vec = vec.detach().float().reshape(-1)
        layer = points[hook]
        out_width = int(head_out_weight(model, layer).shape[0])
        if vec.numel() != out_width:
            raise SteeringFileError(f"{path}: {hook}'s steering_vector has {vec.numel()} values, the module outputs {out_width}")
        coef = _coefficient(entry.get("steering_coefficient", 1.0), path, hook)
        if not math.isfinite(coef) or not torch.isfinite(vec).all():
            raise SteeringFileError(f"{path}: {hook} has a non-finite steering vector or coefficient")
        shifts[layer] = shifts.get(layer, 0.0) + coef * vec.double().numpy()
    if not shifts:
        raise SteeringFileError(f"{path} holds no steering entries")
    meta = {"imported_from": "lm-eval steered", "path": str(path), "positions": "all"}
    return intervention_from_output_shifts(model, shifts, model_name=model_name or model_name_of(model), meta=meta, source=str(path))
