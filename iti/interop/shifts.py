"""Between iti's steering values and the module-output vectors other tools store.

Other tools add a constant to a module's *output*: lm-eval's hookpoints, pyvene's additions, a GGUF bias. So an
export writes every vector of a :class:`~iti.Steering` (an :class:`~iti.Intervention` is its ``head_out`` steering) at
the module whose output it is: ``attn_out`` at the head-output module, ``mlp_out`` at the MLP, ``resid_post`` at the
decoder block (:meth:`~iti.architectures.ModelLayout.site_hook`), and a ``head_out`` vector, which enters the
head-output module at its input, as ``W_o @ v`` at its output (below). Reading goes the other way without any
solving (:func:`steering_from_outputs`); only a request for ITI's head form solves ``attn_out`` vectors back into head
shifts (:func:`intervention_from_steering`), and a vector at a site no head shift reaches is refused there.

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
from ..steering import SiteKey, Steering

#: the sites whose vector is added to a module's output (every site but head_out, which is the o_proj input)
OUTPUT_SITES = ("attn_out", "mlp_out", "resid_post")

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
    return {layer: vec for (_, layer), vec in module_output_vectors(model, intervention).items()}


def as_steering(value: Intervention | Steering) -> Steering:
    """The value as a :class:`Steering` at every position (what every exported file does)."""
    if isinstance(value, Intervention):
        return value.to_steering("all")
    if isinstance(value, Steering):
        return value.with_positions("all")
    raise TypeError(f"expected an iti.Intervention or iti.Steering, got {type(value).__name__}")


def module_output_vectors(model: torch.nn.Module, value: Intervention | Steering) -> dict[SiteKey, np.ndarray]:
    """Per (output site, layer), the float32 vector the value adds to that module's output at every position:
    ``head_out`` vectors become ``attn_out`` vectors ``W_o @ v`` (added to an ``attn_out`` vector of the same layer)."""
    steering = as_steering(value)
    steering.check_model(model)
    out: dict[SiteKey, np.ndarray] = {}
    for (site, layer), vec in steering.vectors.items():
        if site == "head_out":
            w = head_out_weight(model, layer).detach().float().cpu()
            site, vec = "attn_out", (w @ torch.from_numpy(vec)).numpy().astype(np.float32)
        key = (site, layer)
        out[key] = out[key] + vec if key in out else vec.astype(np.float32)
    return dict(sorted(out.items(), key=lambda kv: (OUTPUT_SITES.index(kv[0][0]), kv[0][1])))


def output_sites(model: torch.nn.Module) -> dict[str, SiteKey]:
    """Every module whose output a site is, by module path: ``{path: (site, layer)}``."""
    layout = model_layout(model)
    return {layout.site_hook(site, layer)[0]: (site, layer)
            for layer in range(layout.geometry.num_layers) for site in OUTPUT_SITES}


def steering_from_outputs(model: torch.nn.Module, vectors: dict[SiteKey, np.ndarray], *, model_name: str,
                          meta: dict[str, Any] | None = None, source: str = "the file") -> Steering:
    """The steering value that adds ``vectors`` (per site and layer) at every position, as the file does; zero
    vectors are left out, and a file of nothing but zeros is refused with :class:`EmptyInputError`."""
    kept = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in vectors.items() if np.any(np.asarray(v))}
    if not kept:
        raise EmptyInputError(f"{source} shifts nothing: every vector in it is zero")
    return Steering(kept, model_layout(model).geometry, model_name, "all", dict(meta or {}))


def intervention_from_steering(model: torch.nn.Module, steering: Steering, *, model_name: str | None = None,
                               source: str = "the file") -> Intervention:
    """ITI's head form of a steering value read from a file: ``head_out`` vectors cut per head, ``attn_out`` vectors
    solved back to head shifts (:func:`intervention_from_output_shifts`). A vector at another site, which no head
    shift reproduces, is refused with :class:`UnrepresentableShiftError` naming it."""
    other = [f"{site} of layer {layer}" for site, layer in steering.vectors if site not in ("head_out", "attn_out")]
    if other:
        raise UnrepresentableShiftError(
            f"{source} steers {', '.join(other)}: no shift of the attention heads adds that, so it has no ITI head "
            "form. Read it as a steering value instead (the interop load_*_steering functions; iti import --steering)")
    name = model_name or steering.model_name or model_name_of(model)
    meta = dict(steering.meta)
    heads = {layer: v for (site, layer), v in steering.vectors.items() if site == "head_out"}
    outputs = {layer: v.astype(np.float64) for (site, layer), v in steering.vectors.items() if site == "attn_out"}
    if not outputs:
        return intervention_from_input_shifts(model, heads, model_name=name, meta=meta, source=source)
    for layer, s in heads.items():  # a layer shifted at both ends of o_proj: one output shift
        w = head_out_weight(model, layer).detach().double().cpu().numpy()
        outputs[layer] = outputs.get(layer, 0.0) + w @ s.astype(np.float64)
    return intervention_from_output_shifts(model, outputs, model_name=name, meta=meta, source=source)


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
