"""pyvene's saved ``IntervenableModel``: an intervention as one constant addition per intervened layer.

What :meth:`pyvene.IntervenableModel.save` writes for a constant intervention, and what honest_llama's shared
pyvene intervention holds: ``config.json`` (an ``IntervenableConfig``: one representation per intervention, its
class as a string, whether its source is constant) and one ``intkey_<key>.bin`` per intervention, a
``torch.save`` of its state dict whose ``source_representation`` is the constant. We write one
``AdditionIntervention`` per (site, layer) of a :class:`~iti.Steering` on the output of the module the site is
(:mod:`iti.interop.shifts`: ``<layers>[l].<head-out module>.output`` for ``attn_out`` and for an ITI head shift as
``W_o @ shift``, ``<layers>[l].<mlp>.output``, ``<layers>[l].output``): pyvene adds it at every position it
intervenes on, which is iti's ``positions="all"`` (call ``pv_model.generate(..., intervene_on_prompt=True)``
without unit locations).

Reading accepts the key spellings of pyvene releases before 0.1.5 (``comp.model.layers[3].self_attn.o_proj.output
.unit.pos.nunit.1#0``) and after (``comp_model_layers[3]_self_attn_o_proj_output_unit_pos_nunit_1#0``), loads every
tensor to the CPU with ``weights_only=True`` (no code from the file runs), and takes additions and subtractions of a
constant on a site's module (the head-output module's input or output, the MLP's output, the decoder block's
output) and on pyvene's abstract components for them (``attention_value_output``, ``attention_output``,
``mlp_output``, ``block_output``), as the :class:`~iti.Steering` they are (:func:`load_pyvene_steering`);
:func:`import_pyvene` solves that into ITI head shifts where it can. Anything else is refused with
:class:`~iti.errors.PyveneInterventionError`: trainable or rotation interventions (their effect depends on the
activation), interchanges, a source given at run time, subspaces.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..architectures import model_layout, site_width
from ..errors import InexpressibleExportError, PyveneInterventionError
from ..intervention import Intervention
from ..io import read_json
from ..steering import SiteKey, Steering
from .files import atomic_directory
from .shifts import (
    as_steering,
    intervention_from_steering,
    model_name_of,
    module_output_vectors,
    output_sites,
    steering_from_outputs,
)

CONFIG_FILE = "config.json"
ADDITION = "<class 'pyvene.models.interventions.AdditionIntervention'>"
#: the representation fields of pyvene's ``RepresentationConfig``, in its order (a saved config stores lists)
REPRESENTATION_FIELDS = ("layer", "component", "unit", "max_number_of_units", "low_rank_dimension", "intervention_type",
                         "intervention", "subspace_partition", "group_key", "intervention_link_key", "moe_key",
                         "source_representation", "hidden_source_representation", "latent_dim")
#: model classes pyvene 0.1.8 can load a saved intervention onto (its ``type_to_dimension_mapping``), used when
#: pyvene itself is not installed
PYVENE_MODEL_CLASSES = frozenset({
    "LlamaForCausalLM", "LlamaModel", "MistralForCausalLM", "MistralModel", "Qwen2ForCausalLM", "Qwen2Model",
    "GemmaForCausalLM", "GemmaModel", "Gemma2ForCausalLM", "Gemma2Model", "GPT2LMHeadModel", "GPT2Model",
    "GPTNeoXForCausalLM", "GPTNeoXModel", "OlmoForCausalLM", "OlmoModel", "GPTNeoForCausalLM", "GPTNeoModel"})
_TRAINABLE = re.compile(r"Rotated|Trainable|LowRank|Autoencoder|SigmoidMask|Boundless", re.I)
_COMPONENT = re.compile(r"^(?P<path>.+)\.(?P<hook>input|output)$")
#: pyvene's abstract components (with a layer) that are a steering site, as pyvene's model cards map them
ABSTRACT_SITES = {"attention_value_output": "head_out", "attention_output": "attn_out", "mlp_output": "mlp_out",
                  "block_output": "resid_post"}


def pyvene_component(module_path: str, hook: str = "output") -> str:
    """pyvene's name for a module's output: ``model.layers.3.self_attn.o_proj`` ->
    ``model.layers[3].self_attn.o_proj.output``."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", module_path) + f".{hook}"


def _module_path(component_path: str) -> str:
    """Inverse of the bracket spelling: ``model.layers[3].self_attn.o_proj`` -> ``model.layers.3.self_attn.o_proj``."""
    return re.sub(r"\[(\d+)\]", r".\1", component_path)


def representation_keys(component: str, unit: str = "pos", units: int = 1, index: int = 0) -> list[str]:
    """The file keys pyvene gives a string component: the current spelling, then the one before pyvene 0.1.5."""
    new = f"comp_{component.replace('.', '_')}_unit_{unit.replace('.', '_')}_nunit_{units}#{index}"
    old = f"comp.{component}.unit.{unit}.nunit.{units}#{index}"
    return [new, old]


def _loadable_by_pyvene(model: torch.nn.Module) -> bool:
    name = type(model).__name__
    try:
        from pyvene.models.intervenable_modelcard import type_to_dimension_mapping
    except ImportError:
        return name in PYVENE_MODEL_CLASSES
    return type(model) in type_to_dimension_mapping


def export_pyvene(model: torch.nn.Module, value: Intervention | Steering, out_dir: str | os.PathLike, *,
                  force: bool = False) -> Path:
    """Write ``value`` (an intervention or any steering) as a saved pyvene ``IntervenableModel`` in ``out_dir``
    (see the module docstring); load it with ``pyvene.IntervenableModel.load(out_dir, model)``. Refused before
    anything is written when pyvene cannot load an intervention onto this model class
    (:class:`InexpressibleExportError`)."""
    steering = as_steering(value)
    steering.check_model(model)
    if not _loadable_by_pyvene(model):
        raise InexpressibleExportError(
            f"pyvene cannot load a saved intervention onto {type(model).__name__} (its model card maps "
            f"{', '.join(sorted(c for c in PYVENE_MODEL_CLASSES if c.endswith(('ForCausalLM', 'LMHeadModel'))))}); "
            "export it for lm-eval (--format lm-eval) or use iti's own intervention instead")
    layout = model_layout(model)
    vectors = module_output_vectors(model, steering)
    representations, keys = [], []
    for site, layer in vectors:
        component = pyvene_component(layout.site_hook(site, layer)[0])
        representations.append([0, component, "pos", 1] + [None] * (len(REPRESENTATION_FIELDS) - 4))
        keys.append(representation_keys(component)[0])
    record: dict[str, Any] = {"format": "iti-pyvene-export", "iti_version": __version__, "steering": steering.fingerprint(),
                              "model_name": steering.model_name, "sites": [list(k) for k in vectors],
                              "shift": "each vector added to its module's output; positions='all'"}
    if isinstance(value, Intervention):
        record.update(intervention=value.fingerprint(), heads=[list(h) for h in value.heads], alpha=value.alpha,
                      shift="W_o @ shift added to the head-output module's output; positions='all'")
    config = {
        "intervention_constant_sources": [True] * len(keys),
        "intervention_dimensions": [None] * len(keys),
        "intervention_types": [ADDITION] * len(keys),
        "mode": "parallel",
        "representations": representations,
        "sorted_keys": keys,
        "iti": record,
    }
    with atomic_directory(out_dir, force=force) as tmp:
        for key, vec in zip(keys, vectors.values()):
            torch.save({"source_representation": torch.from_numpy(vec).clone()}, tmp / f"intkey_{key}.bin")
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def _representation(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {k: raw.get(k) for k in REPRESENTATION_FIELDS}
    if isinstance(raw, (list, tuple)):
        values = list(raw) + [None] * (len(REPRESENTATION_FIELDS) - len(raw))
        return dict(zip(REPRESENTATION_FIELDS, values))
    raise PyveneInterventionError(f"{where}: a representation is neither a list nor a dict: {raw!r}")


def _load_source(path: Path, candidates: list[str], where: str) -> torch.Tensor:
    for key in candidates:
        file = path / f"intkey_{key}.bin"
        if file.exists():
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:  # a pickle that needs code, a truncated file
                raise PyveneInterventionError(f"{file} cannot be read as plain tensors ({type(e).__name__}: {str(e)[:200]})") from None
            if not isinstance(state, dict) or not isinstance(state.get("source_representation"), torch.Tensor):
                raise PyveneInterventionError(f"{file} holds no source_representation tensor (keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
            source = state["source_representation"].detach().float()
            if not torch.isfinite(source).all():  # NaN would pass every tolerance check downstream (NaN > tol is False)
                raise PyveneInterventionError(f"{file}: its source_representation tensor holds NaN or infinite values")
            return source
    raise PyveneInterventionError(f"{where}: none of the files {[f'intkey_{k}.bin' for k in candidates]} is in {path}")


def load_pyvene_steering(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Steering:
    """Read a saved pyvene intervention of constant additions (see the module docstring) as the :class:`Steering`
    it is for ``model``: each component's site and layer, at every position. No solving."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PyveneInterventionError(f"{path} is a file; a saved pyvene intervention is a directory holding {CONFIG_FILE} "
                                      "and intkey_*.bin files (what IntervenableModel.save writes)")
    config = read_json(path / CONFIG_FILE, "pyvene config")
    if not isinstance(config, dict) or "representations" not in config or "intervention_types" not in config:
        raise PyveneInterventionError(f"{path / CONFIG_FILE} is not a saved pyvene IntervenableConfig (no representations "
                                      "or intervention_types)")
    raws = config["representations"]
    types = config["intervention_types"]
    if not isinstance(types, list):
        types = [types] * len(raws)
    constants = config.get("intervention_constant_sources") or [None] * len(raws)
    dims = config.get("intervention_dimensions") or [None] * len(raws)
    sorted_keys = config.get("sorted_keys") or [None] * len(raws)
    if not (len(types) == len(raws) == len(constants) == len(dims) == len(sorted_keys)):
        raise PyveneInterventionError(f"{path / CONFIG_FILE}: {len(raws)} representations but {len(types)} intervention types, "
                                      f"{len(constants)} constant-source flags, {len(sorted_keys)} keys")
    layout = model_layout(model)
    g = layout.geometry
    by_output = output_sites(model)
    by_input = {p: ("head_out", l) for l, p in enumerate(layout.head_out_paths)}
    vectors: dict[SiteKey, np.ndarray] = {}
    seen: dict[str, int] = {}
    for i, (raw, type_str, constant, dim, saved_key) in enumerate(zip(raws, types, constants, dims, sorted_keys)):
        rep = _representation(raw, f"{path / CONFIG_FILE} representation {i}")
        where = f"{path.name}: intervention {i} ({type_str} on {rep['component']!r})"
        kind = str(type_str).replace("<class '", "").replace("'>", "").rsplit(".", 1)[-1]
        if _TRAINABLE.search(kind):
            raise PyveneInterventionError(f"{where} is a trainable or rotation intervention: its effect depends on the "
                                          "activation and learned weights, not a constant shift iti can represent")
        if kind not in ("AdditionIntervention", "SubtractionIntervention"):
            raise PyveneInterventionError(f"{where} is not a constant addition (only AdditionIntervention and "
                                          "SubtractionIntervention with a constant source are read)")
        if constant is not True:
            raise PyveneInterventionError(f"{where} takes its source at run time, not from the file: no constant shift to import")
        if rep.get("subspace_partition") is not None or (rep.get("unit") or "pos") != "pos":
            raise PyveneInterventionError(f"{where} intervenes on subspaces or units other than positions, which iti cannot represent")
        component = str(rep["component"])
        units = rep.get("max_number_of_units") or 1
        if component in ABSTRACT_SITES and rep.get("layer") is not None:
            key: SiteKey = (ABSTRACT_SITES[component], int(rep["layer"]))
            key_base = f"layer_{key[1]}_comp_{component}_unit_pos_nunit_{units}"
            candidates = [key_base, f"layer.{key[1]}.comp.{component}.unit.pos.nunit.{units}"]
        else:
            m = _COMPONENT.match(component)
            module = _module_path(m.group("path")) if m else None
            table = by_input if m is not None and m.group("hook") == "input" else by_output
            if m is None or module not in table:
                raise PyveneInterventionError(
                    f"{where}: the component is no steering site of this model: iti reads the input or output of a "
                    f"head-output module, the output of an MLP or of a decoder block (e.g. "
                    f"{pyvene_component(layout.head_out_paths[0])!r})")
            key = table[module]
            candidates = representation_keys(component, "pos", units, 0)
            candidates = [c.rsplit("#", 1)[0] for c in candidates]
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise PyveneInterventionError(f"{where}: its intervention dimension is {dim!r}, not a positive integer")
        count = seen.get(candidates[0], 0)
        seen[candidates[0]] = count + 1
        files = ([saved_key] if saved_key else []) + [f"{c}#{count}" for c in candidates]
        vec = _load_source(path, files, where).reshape(-1)
        width = site_width(g, key[0])
        if vec.numel() != width:
            raise PyveneInterventionError(f"{where}: its constant has {vec.numel()} values, its module has {width}")
        v = vec.numpy().astype(np.float64)
        if dim is not None and dim < width:
            v[dim:] = 0.0  # pyvene adds only the first interchange_dim entries
        if kind == "SubtractionIntervention":
            v = -v
        vectors[key] = vectors.get(key, 0.0) + v
    meta = {"imported_from": "pyvene", "path": str(path), "positions": "all"}
    return steering_from_outputs(model, vectors, model_name=model_name or model_name_of(model), meta=meta, source=str(path))


def import_pyvene(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Intervention:
    """Read a saved pyvene intervention of constant additions on head-output modules as an iti
    :class:`Intervention` for ``model`` whose effect is the file's at every position (solved back to head shifts)."""
    steering = load_pyvene_steering(path, model, model_name=model_name)
    return intervention_from_steering(model, steering, model_name=model_name, source=str(path))
