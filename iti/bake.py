"""Bake an intervention into the weights, so any server runs the edited model with zero overhead.

The runtime shift enters *before* the output projection: ``o_proj(x + s) = W_o x + W_o s (+ b)``. So the
equivalent bias is ``W_o @ s``. honest_llama's current edit_weight.py stores ``o_proj.bias = s`` (the raw head-space
shift), which is not the same model; we store ``W_o @ s`` (added to an existing bias where there is one).

Stock transformers must be able to load the result: Llama and Gemma read ``config.attention_bias``, which gives
q/k/v/o projections biases; we set it and store explicit zero q/k/v biases (identical maths, no reliance on
initialisation of missing weights). GPT-2 (``attn.c_proj``) and GPT-NeoX (``attention.dense``) already have biases.
Mistral and Qwen2 hard-code ``o_proj`` without a bias, so a baked model of those could not be loaded by stock
transformers: they are refused with a clear error (use the runtime intervention instead).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .architectures import bakeable_architectures, model_layout, text_config
from .errors import AlreadyBakedError, UnsupportedArchitectureError
from .intervention import Intervention
from .io import set_plain_modes


def _attention_linears(layer: nn.Module, paths: tuple[str, ...]) -> list[nn.Linear]:
    found = []
    for path in paths:
        try:
            module = layer.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear):
            found.append(module)
    return found


#: config attribute listing the fingerprints of the interventions baked into a model, in order (save_pretrained
#: writes it into config.json, so a reloaded baked model still carries it)
BAKED_ATTR = "iti_baked"


def baked_fingerprints(model: nn.Module) -> list[str]:
    """Fingerprints of the interventions :func:`bake` added to this model (empty for a model never baked)."""
    mark = getattr(model.config, BAKED_ATTR, None)
    if not mark:
        return []
    return [str(mark)] if isinstance(mark, str) else [str(m) for m in mark]


def bake(model: nn.Module, intervention: Intervention, *, add_to_existing: bool = False) -> nn.Module:
    """Add ``W_o @ shift`` to the output-projection bias of every intervened layer, in place.

    The model is marked (``config.iti_baked``, a list of intervention fingerprints, saved with the model). A model
    that already carries a baked intervention is refused with :class:`~iti.errors.AlreadyBakedError`, since a
    second bake adds a second shift on top of the first; pass ``add_to_existing=True`` to stack them on purpose.
    """
    intervention.check_model(model)
    already = baked_fingerprints(model)
    if already and not add_to_existing:
        same = " (this same intervention)" if intervention.fingerprint() in already else ""
        raise AlreadyBakedError(
            f"this model already has ITI shift(s) baked into its biases: config.{BAKED_ATTR} = {already}{same}; "
            f"baking intervention {intervention.fingerprint()} again would add its shift on top. Start from the "
            "unbaked model, or pass add_to_existing=True to stack the shifts on purpose."
        )
    layout = model_layout(model)
    spec = layout.spec
    if not spec.bakeable:
        raise UnsupportedArchitectureError(
            f"cannot bake into {layout.model_type!r}: stock transformers builds its attention output projection without "
            f"a bias, so the baked model could not be loaded. Bakeable: {', '.join(bakeable_architectures())}; "
            "use intervention.applied(model, positions='all') instead."
        )
    if spec.output_bias == "config":
        config: Any = model.config
        setattr(text_config(config), spec.bias_attr, True)
        setattr(config, spec.bias_attr, True)  # the same object unless the config nests a text config
        for i in range(layout.geometry.num_layers):
            for lin in _attention_linears(layout.layer_module(model, i), spec.attention_linears or (spec.head_out,)):
                if lin.bias is None:
                    lin.bias = nn.Parameter(torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype), requires_grad=False)
    with torch.no_grad():
        for layer, shift in intervention.layer_shifts().items():
            module = layout.head_out_module(model, layer)
            w, bias = cast(torch.Tensor, module.weight), cast(torch.Tensor, module.bias)
            s = torch.from_numpy(shift).to(device=w.device, dtype=torch.float32)
            delta = s @ w.float() if spec.weight_layout == "in_out" else w.float() @ s  # GPT-2's Conv1D stores [in, out]
            bias.add_(delta.to(bias.dtype))
    setattr(model.config, BAKED_ATTR, [*already, intervention.fingerprint()])
    return model


def save_baked(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike, intervention: Intervention) -> Path:
    """``save_pretrained`` as safetensors (loadable by transformers, vLLM, TGI) plus the intervention for provenance."""
    out = Path(out_dir)
    before = _file_stamps(out)
    cast(Any, model).save_pretrained(out, safe_serialization=True)  # a transformers model
    tokenizer.save_pretrained(out)
    # save_pretrained writes its safetensors files private (0600): give what this call wrote a plain write's mode
    set_plain_modes(out, [p for p, stamp in _file_stamps(out).items() if before.get(p) != stamp])
    intervention.save(out / "iti_intervention")
    return out


def _file_stamps(directory: Path) -> dict[Path, tuple[int, int]]:
    if not directory.is_dir():
        return {}
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in directory.rglob("*") if p.is_file() and not p.is_symlink()}
