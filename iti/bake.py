"""Bake an intervention (or any :class:`~iti.Steering` whose sites a bias can carry) into the weights, so any
server runs the edited model with zero overhead. A baked vector acts at every position (``positions="all"``).

Sites: ``head_out`` -> the output projection's bias += ``W_o @ s``; ``attn_out`` -> that bias += ``v``;
``mlp_out`` and ``resid_post`` -> the MLP output projection's bias += ``v`` (the residual stream after a block is
the stream before its MLP plus the MLP's output, so the two are one bias wherever the MLP output is added as it is:
Llama, GPT-2, GPT-NeoX, Falcon; Gemma's MLPs have no bias switch and Gemma 2 and 3 normalise the MLP output, so
those sites are refused there by name). Llama's ``config.mlp_bias`` gives gate/up/down biases (zeros stored for
gate and up); Falcon's ``config.bias`` switches its MLP biases with the attention's.

The runtime shift enters *before* the output projection: ``o_proj(x + s) = W_o x + W_o s (+ b)``. So the
equivalent bias is ``W_o @ s``. honest_llama's current edit_weight.py stores ``o_proj.bias = s`` (the raw head-space
shift), which is not the same model; we store ``W_o @ s`` (added to an existing bias where there is one).

Stock transformers must be able to load the result: Llama and Gemma read ``config.attention_bias``, which gives
q/k/v/o projections biases; we set it and store explicit zero q/k/v biases (identical maths, no reliance on
initialisation of missing weights). Falcon's ``config.bias`` does the same for its fused QKV, dense and MLP layers.
GPT-2 (``attn.c_proj``) and GPT-NeoX (``attention.dense``) already have biases. Mistral and Qwen2 hard-code
``o_proj`` without a bias, but each is Llama with other defaults (Mistral: a sliding window; Qwen2: q/k/v biases), so
:func:`save_baked` writes them as Llama-architecture checkpoints (``LlamaForCausalLM``, ``attention_bias: true``, their
own biases, zeros where they had none), which stock transformers and serving engines load with the bias. That is done
only when the Llama config reproduces the model exactly (no sliding window within the context, a rope Llama knows);
otherwise baking is refused with the reason.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .architectures import bakeable_architectures, model_layout, text_config
from .errors import AlreadyBakedError, OffloadedWeightsError, OutputExistsError, UnsupportedArchitectureError
from .intervention import Intervention
from .io import fsync_dir, set_plain_modes
from .models import check_complete_checkpoint
from .steering import Steering


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


HEAD_SITES = ("head_out", "attn_out")  # carried by the attention output projection's bias
MLP_SITES = ("mlp_out", "resid_post")  # carried by the MLP output projection's bias


def _as_steering(value: Intervention | Steering) -> Steering:
    if isinstance(value, Intervention):
        return value.to_steering("all")
    if isinstance(value, Steering):
        return value
    raise TypeError(f"bake takes an Intervention or a Steering, not {type(value).__name__}")


def _zero_biases(layer: nn.Module, paths: tuple[str, ...]) -> None:
    for lin in _attention_linears(layer, paths):
        if lin.bias is None:
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype), requires_grad=False)


def bake(model: nn.Module, intervention: Intervention | Steering, *, add_to_existing: bool = False) -> nn.Module:
    """Add each vector to the bias that carries its site (``W_o @ shift`` for head shifts), in place.

    The model is marked (``config.iti_baked``, a list of fingerprints, saved with the model). A model that already
    carries a baked shift is refused with :class:`~iti.errors.AlreadyBakedError`, since a second bake adds a second
    shift on top of the first; pass ``add_to_existing=True`` to stack them on purpose. A site the architecture's
    stock class cannot carry as a bias is refused by name before anything changes.
    """
    value = _as_steering(intervention)
    if isinstance(intervention, Intervention):
        intervention.check_model(model)
    else:
        value.check_model(model)
    already = baked_fingerprints(model)
    if already and not add_to_existing:
        same = " (this same one)" if intervention.fingerprint() in already else ""
        raise AlreadyBakedError(
            f"this model already has ITI shift(s) baked into its biases: config.{BAKED_ATTR} = {already}{same}; "
            f"baking {intervention.fingerprint()} again would add its shift on top. Start from the "
            "unbaked model, or, to stack the shifts on purpose, pass --add_to_existing (iti bake / edit_weight.py) or "
            "add_to_existing=True (iti.bake from Python)."
        )
    layout = model_layout(model)
    spec = layout.spec
    sites = value.sites
    head_sites = [s for s in sites if s in HEAD_SITES]
    mlp_sites = [s for s in sites if s in MLP_SITES]
    if head_sites and not spec.bakeable:
        raise UnsupportedArchitectureError(
            f"cannot bake {', '.join(head_sites)} into {layout.model_type!r}: stock transformers builds its attention output "
            f"projection without a bias, so the baked model could not be loaded. Bakeable: {', '.join(bakeable_architectures())}; "
            "use .applied(model, positions='all') instead."
        )
    if mlp_sites and spec.mlp_bias == "none":
        raise UnsupportedArchitectureError(
            f"cannot bake {', '.join(mlp_sites)} into {layout.model_type!r}: its stock MLP has no output bias to carry the "
            "vector (or normalises the MLP output before adding it to the residual stream, as Gemma 2 and 3 do). "
            "head_out and attn_out bake there; for these sites use .applied(model, positions='all').")
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise OffloadedWeightsError(
            f"cannot bake into this model: {len(offloaded)} of its weights ({', '.join(offloaded[:3])}, ...) are offloaded "
            "(on the meta device; accelerate brings them in for each forward pass under a device_map that puts layers on "
            "the CPU or disk), so the bias would be written nowhere. Load it without offloading (on the GPUs, or on the "
            "CPU) to bake it, or use intervention.applied(model, positions='all').")
    if head_sites and spec.output_bias == "llama":
        problem = llama_checkpoint_problem(model.config)
        if problem is not None:
            raise UnsupportedArchitectureError(
                f"cannot bake into {layout.model_type!r}: its o_proj has no bias, and a baked model is saved as a Llama "
                f"checkpoint only when that reproduces the model exactly, but {problem}. Use "
                "intervention.applied(model, positions='all') instead.")
    config: Any = model.config
    switches: list[tuple[str, tuple[str, ...]]] = []
    if head_sites and spec.output_bias in ("config", "llama"):
        switches.append((spec.bias_attr, spec.attention_linears or (spec.head_out,)))
    if mlp_sites and spec.mlp_bias == "config":
        switches.append((spec.mlp_bias_attr, spec.mlp_linears or (spec.mlp_out_linear,)))
    if mlp_sites and spec.mlp_bias == "shared":
        switches.append((spec.bias_attr, spec.attention_linears or (spec.mlp_out_linear,)))
    for attr, linears in switches:
        setattr(text_config(config), attr, True)
        setattr(config, attr, True)  # the same object unless the config nests a text config
        for i in range(layout.geometry.num_layers):
            _zero_biases(layout.layer_module(model, i), linears)
    with torch.no_grad():
        for (site, layer), vec in value.vectors.items():
            if site in HEAD_SITES:
                module = layout.head_out_module(model, layer)
            else:
                module = layout.mlp_out_module(model, layer)
            w, bias = cast(torch.Tensor, module.weight), cast(torch.Tensor, module.bias)
            v = torch.from_numpy(vec).to(device=w.device, dtype=torch.float32)
            if site == "head_out":
                v = v @ w.float() if spec.weight_layout == "in_out" else w.float() @ v  # GPT-2's Conv1D stores [in, out]
            bias.add_(v.to(bias.dtype))
    setattr(model.config, BAKED_ATTR, [*already, intervention.fingerprint()])
    return model


#: Config keys of Mistral and Qwen2 that a Llama config does not have; what they say is checked before they are dropped.
_NOT_LLAMA_KEYS = ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")


def llama_checkpoint_problem(config: Any) -> str | None:
    """Why a Llama config could not reproduce this Mistral or Qwen2 model, or None when it can: the sliding window
    must be unused within the context (Mistral: ``sliding_window`` None or at least ``max_position_embeddings``;
    Qwen2: no sliding layers, or a window at least the context), and the rope must be one Llama computes alike."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model_type = getattr(config, "model_type", None)
    if model_type not in ("mistral", "qwen2"):
        return f"model_type {model_type!r} is not Mistral or Qwen2"
    context = getattr(config, "max_position_embeddings", None)
    window = getattr(config, "sliding_window", None)
    if model_type == "mistral":
        sliding = window is not None
    else:
        layer_types = getattr(config, "layer_types", None) or []
        sliding = bool(getattr(config, "use_sliding_window", False)) or "sliding_attention" in layer_types
        sliding = sliding and window is not None
    if sliding and (context is None or int(cast(Any, window)) < int(context)):
        return (f"its sliding window ({window} tokens) is active within its context ({context} tokens), which a Llama "
                "checkpoint cannot express")
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        return f"its rope type {rope_type!r} is not one Llama computes"
    return None


def as_llama_checkpoint(model: nn.Module) -> nn.Module:
    """A ``LlamaForCausalLM`` sharing the baked Mistral or Qwen2 model's tensors (no copy), with ``attention_bias``
    on: every q/k/v/o bias the model has (Qwen2's q/k/v, the baked o_proj), zeros where it has none."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config: Any = model.config
    problem = llama_checkpoint_problem(config)
    if problem is not None:
        raise UnsupportedArchitectureError(f"cannot save this {config.model_type!r} model as a Llama checkpoint: {problem}")
    d = {k: v for k, v in config.to_dict().items() if k not in (*_NOT_LLAMA_KEYS, "model_type", "architectures", "transformers_version")}
    d.update(attention_bias=True, mlp_bias=False, architectures=["LlamaForCausalLM"])
    llama_config = LlamaConfig(**d)
    with torch.device("meta"):
        llama = LlamaForCausalLM(llama_config)
    state = dict(model.state_dict())
    for name, p in llama.state_dict().items():  # zero biases the model lacks (Mistral's q/k/v/o before baking)
        if name not in state and name.endswith(".bias"):
            like = state[name[: -len("bias")] + "weight"]
            state[name] = torch.zeros(p.shape, dtype=like.dtype, device=like.device)
    llama.load_state_dict(state, strict=True, assign=True)
    if getattr(llama_config, "tie_word_embeddings", False):
        llama.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        llama.generation_config = cast(Any, model).generation_config
    return llama.eval()


def check_output_dir(out_dir: str | os.PathLike, force: bool = False) -> None:
    """Refuse (:class:`~iti.errors.OutputExistsError`) an ``out_dir`` that is a file or a non-empty directory unless
    ``force``: a bake replaces the whole directory, never file by file (a user's config.json, a sharded checkpoint's
    index, another bake's weights beside this one's ``iti_intervention/``)."""
    out = Path(out_dir)
    if force or not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} is a file, not a directory to save the baked model in; pass force=True "
                                "(--force) to replace it, or choose another output_dir")
    found = sorted(p.name for p in out.iterdir())
    if found:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise OutputExistsError(f"{out} is not empty ({len(found)} entries: {shown}); a bake writes a whole checkpoint "
                                "directory and replaces it as a whole: pass force=True (--force) to replace it, or "
                                "choose another output_dir")


def save_baked(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike, intervention: Intervention | Steering, *,
               force: bool = False) -> Path:
    """``save_pretrained`` as safetensors (loadable by transformers, vLLM, TGI) plus the intervention (``iti_intervention/``)
    or steering value (``iti_steering/``) for provenance.
    A baked Mistral or Qwen2 is written as a Llama-architecture checkpoint (see :func:`as_llama_checkpoint`).

    The checkpoint is written whole into a temporary directory beside ``out_dir`` and renamed into place at the end:
    an interrupted save leaves ``out_dir`` as it was. A file or a non-empty directory at ``out_dir`` is refused
    (:func:`check_output_dir`) unless ``force``; then it is replaced as a whole, once the new checkpoint is complete."""
    out = Path(out_dir)
    check_output_dir(out, force)
    if model_layout(model).spec.output_bias == "llama":
        model = as_llama_checkpoint(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.urandom(6).hex()}.partial"
    tmp.mkdir()  # a plain mkdir's mode, as out would have
    try:
        cast(Any, model).save_pretrained(tmp, safe_serialization=True)  # a transformers model
        tokenizer.save_pretrained(tmp)
        check_complete_checkpoint(tmp, model)
        intervention.save(tmp / ("iti_intervention" if isinstance(intervention, Intervention) else "iti_steering"))
        set_plain_modes(tmp)  # save_pretrained writes its safetensors files private (0600)
        for p in tmp.rglob("*"):
            if p.is_file() and not p.is_symlink():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        _replace_dir(tmp, out, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_dir(new: Path, out: Path, force: bool) -> None:
    """Rename the complete directory ``new`` to ``out``. What was at ``out`` (with ``force``) is first renamed aside
    and removed only after ``new`` is in place; it is put back if that rename fails."""
    check_output_dir(out, force)  # something may have appeared at out while saving
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    if not (out.exists() or out.is_symlink()):
        os.replace(new, out)
        fsync_dir(out.parent)
        return
    aside = out.parent / f".{out.name}.{os.urandom(6).hex()}.old"
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)
        raise
    fsync_dir(out.parent)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink()
