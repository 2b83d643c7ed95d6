"""Between iti's head-space shifts and the output-space shifts other tools store.

An iti shift ``s`` enters the head-output module (``o_proj``) at its input; pyvene's additive intervention,
lm-eval's steering vector and a baked GGUF bias all add ``v = W_o @ s`` at its output, which is the same model
(``o_proj(x + s) = W_o x + W_o s + b``). Going back, ``s`` is found by least squares per layer: ``W_o`` is square
and invertible in Llama-like models, so the minimum-norm solution is the original sparse shift (heads that were
not shifted come back as rounding noise and are dropped); where ``W_o`` is wide (Gemma: heads x head_dim >
hidden) a head shift with the same effect is found, though not the original one; where it is tall, or the vector
is foreign, the reconstruction ``W_o @ s`` is checked against ``v`` and a shift outside the range of ``W_o`` is
refused (:class:`~iti.errors.UnrepresentableShiftError`). So an import is always an ordinary
:class:`~iti.Intervention` that reproduces the file's effect, and nothing downstream needs a second kind of shift.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..architectures import model_layout
from ..errors import EmptyInputError, UnrepresentableShiftError
from ..intervention import Intervention

#: heads whose solved shift is below this fraction of the layer's largest are tried as rounding noise: dropped when the
#: other heads alone still reproduce the vector
DROP_BELOW = 1e-3
#: largest accepted relative error ``|W_o s - v| / |v|`` of a reconstructed layer shift
RECONSTRUCTION_RTOL = 1e-4


def head_out_weight(model: torch.nn.Module, layer: int) -> torch.Tensor:
    """The head-output projection of ``layer`` as an ``[out, in]`` matrix (GPT-2's Conv1D stores it transposed)."""
    layout = model_layout(model)
    w = layout.head_out_module(model, layer).weight
    assert isinstance(w, torch.Tensor)
    return w.T if layout.spec.weight_layout == "in_out" else w


def output_shifts(model: torch.nn.Module, intervention: Intervention) -> dict[int, np.ndarray]:
    """Per intervened layer, the float32 vector ``W_o @ shift`` that the intervention adds to the head-output
    module's output at every position (what :func:`iti.bake.bake` adds to the bias)."""
    intervention.check_model(model)
    out = {}
    for layer, shift in intervention.layer_shifts().items():
        w = head_out_weight(model, layer).detach().float().cpu()
        out[layer] = (w @ torch.from_numpy(shift)).numpy().astype(np.float32)
    return out


def intervention_from_output_shifts(model: torch.nn.Module, shifts: dict[int, np.ndarray], *, model_name: str,
                                    meta: dict[str, Any] | None = None, source: str = "the file") -> Intervention:
    """The head-space intervention whose ``W_o @ shift`` is ``shifts[layer]`` in every layer (module docstring).

    Raises :class:`UnrepresentableShiftError` naming the layer when no head shift reproduces a vector within
    :data:`RECONSTRUCTION_RTOL`; the largest relative error found is kept in ``meta["max_reconstruction_error"]``."""
    layout = model_layout(model)
    g = layout.geometry
    head_shifts: dict[tuple[int, int], np.ndarray] = {}
    worst = 0.0
    for layer, vec in sorted(shifts.items()):
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        if not np.any(v):
            continue
        w = head_out_weight(model, layer).detach().double().cpu().numpy()
        s, err = _solve_layer(w, v, g.num_heads, g.head_dim)
        if err > RECONSTRUCTION_RTOL:
            raise UnrepresentableShiftError(
                f"layer {layer} of {source}: no shift of the head outputs reproduces its output vector (the best one "
                f"misses it by {err:.2e} of its norm; W_o of {model_name} is {w.shape[0]} x {w.shape[1]}), so it is no "
                "ITI shift of this model")
        worst = max(worst, err)
        for h in np.flatnonzero(np.any(s != 0, axis=1)):
            head_shifts[(layer, int(h))] = s[h]
    if not head_shifts:
        raise EmptyInputError(f"{source} shifts nothing: every vector in it is zero")
    info = {**(meta or {}), "solved_from": "output shifts (W_o @ shift), least squares per layer",
            "max_reconstruction_error": worst}
    return Intervention.from_head_shifts(head_shifts, model_name, g, info)


def intervention_from_input_shifts(model: torch.nn.Module, shifts: dict[int, np.ndarray], *, model_name: str,
                                   meta: dict[str, Any] | None = None, source: str = "the file") -> Intervention:
    """The intervention that adds ``shifts[layer]`` (a ``[heads * head_dim]`` vector) to the head-output module's
    input: cut per head; heads whose slice is zero are left out."""
    g = model_layout(model).geometry
    head_shifts = {}
    for layer, vec in shifts.items():
        s = np.asarray(vec, dtype=np.float64).reshape(g.num_heads, g.head_dim)
        for h in range(g.num_heads):
            if np.any(s[h]):
                head_shifts[(layer, h)] = s[h]
    if not head_shifts:
        raise EmptyInputError(f"{source} shifts nothing: every vector in it is zero")
    return Intervention.from_head_shifts(head_shifts, model_name, g, dict(meta or {}))


def model_name_of(model: torch.nn.Module) -> str:
    """A name for the model in an imported intervention: its config's ``_name_or_path`` or model type."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model"))


def _solve_layer(w: np.ndarray, v: np.ndarray, num_heads: int, head_dim: int) -> tuple[np.ndarray, float]:
    """``([heads, head_dim] shift, relative error)`` with ``w @ shift ~= v``: the minimum-norm solution, then, when
    some heads carry only rounding noise (the float32 vector of a sparse shift), the solution on the other heads
    alone if it reproduces ``v`` as well; so a square ``W_o`` gives back the shifted heads and nothing else."""
    if w.shape[0] == w.shape[1]:
        try:
            s = np.linalg.solve(w, v)
        except np.linalg.LinAlgError:
            s = np.linalg.lstsq(w, v, rcond=None)[0]
    else:
        s = np.linalg.lstsq(w, v, rcond=None)[0]
    s = s.reshape(num_heads, head_dim)
    norm_v = np.linalg.norm(v)
    err = float(np.linalg.norm(w @ s.reshape(-1) - v) / norm_v)
    norms = np.linalg.norm(s, axis=1)
    keep = norms > DROP_BELOW * norms.max()
    if keep.all():
        return s, err
    cols = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in np.flatnonzero(keep)])
    sparse = np.zeros_like(s)
    sparse[keep] = np.linalg.lstsq(w[:, cols], v, rcond=None)[0].reshape(-1, head_dim)
    sparse_err = float(np.linalg.norm(w @ sparse.reshape(-1) - v) / norm_v)
    return (sparse, sparse_err) if sparse_err <= max(err, 1e-6) * 10 else (s, err)
