"""Per-architecture knowledge: where the per-head attention outputs are, and the head geometry.

The one fact ITI needs from a model is the module whose *input* is the concatenation of the per-head attention
outputs (before the output projection): ``o_proj`` in Llama-like models, ``attn.c_proj`` in GPT-2,
``attention.dense`` in GPT-NeoX. To support a new architecture, call :func:`register_architecture`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

from .errors import HeadIndexError, InvalidOptionError, UnsupportedArchitectureError

#: The steering sites every registered architecture resolves, per decoder block: the concatenated per-head
#: attention outputs (the input of o_proj / c_proj / dense: ITI's site), the attention output (that module's
#: output, before any post-attention norm), the MLP's output, and the residual stream after the block.
SITES = {
    "head_out": "per-head attention outputs, concatenated (the output projection's input; ITI's site)",
    "attn_out": "the attention output projection's output",
    "mlp_out": "the MLP's output",
    "resid_post": "the residual stream after the decoder block",
}


@dataclass(frozen=True)
class HeadGeometry:
    """Shape of a model's attention: heads are indexed (layer, head) with 0 <= head < num_heads."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def num_total_heads(self) -> int:
        """Heads across all layers (layers x heads); flat head indices run from 0 to this minus 1."""
        return self.num_layers * self.num_heads

    @property
    def head_out_size(self) -> int:
        """Width of the o_proj input; differs from hidden_size in Gemma."""
        return self.num_heads * self.head_dim

    def check_head(self, layer: int, head: int) -> None:
        """Raise HeadIndexError, naming the valid range, unless (layer, head) exists in this model (0-based)."""
        if not (0 <= int(layer) < self.num_layers):
            raise HeadIndexError(f"layer {layer} out of range: the model has layers 0..{self.num_layers - 1}")
        if not (0 <= int(head) < self.num_heads):
            raise HeadIndexError(f"head {head} out of range: each layer has heads 0..{self.num_heads - 1}")

    def to_dict(self) -> dict[str, int]:
        """The five sizes as a plain dict, as stored in feature manifests and intervention files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadGeometry:
        """Inverse of :meth:`to_dict`: reads the five sizes as ints and ignores any other keys."""
        return cls(**{k: int(d[k]) for k in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size")})


def site_width(geometry: HeadGeometry, site: str) -> int:
    """The length of a steering vector at ``site``: heads x head_dim at ``head_out``, the hidden size elsewhere."""
    if site not in SITES:
        raise InvalidOptionError(f"unknown steering site {site!r}: one of {', '.join(SITES)}")
    return geometry.head_out_size if site == "head_out" else geometry.hidden_size


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything the library knows about one family of models, in one place: where the decoder blocks and the
    head-output module are, which linear layers make up attention, how the output projection takes a bias (for
    baking), how its weight is laid out, and where the config keeps the context length."""

    layers_paths: tuple[str, ...]
    """Candidate paths of the ``nn.ModuleList`` of decoder blocks; the first that exists is used."""
    head_out: str
    """Path, relative to one decoder block, of the module whose input is the concatenated head outputs."""
    attention_linears: tuple[str, ...] = ()
    """Paths, relative to one block, of the linear layers that share the output bias switch (``bias_attr``): baking
    gives each one without a bias an explicit zero bias, so switching the config flag on changes no maths."""
    output_bias: str = "none"
    """``"config"``: stock transformers builds the head-output bias (with the other ``attention_linears``) when the
    config attribute ``bias_attr`` is true; ``"always"``: the head-output module always has a bias; ``"none"``: the
    stock class has no bias there, so a baked model could not be loaded (baking is refused); ``"llama"``: the stock
    class has no bias there but is Llama with other defaults (Mistral, Qwen2), so the baked model is saved as a
    Llama-architecture checkpoint with ``attention_bias: true`` (when its config says the same model, else refused)."""
    weight_layout: str = "out_in"
    """``"out_in"`` for ``nn.Linear`` ([out, in]); ``"in_out"`` for GPT-2's ``Conv1D``."""
    context_attrs: tuple[str, ...] = ("max_position_embeddings",)
    """Config attributes (of the text config) that hold the context length, first found wins."""
    bias_attr: str = "attention_bias"
    """With ``output_bias="config"``: the config attribute that switches the biases on (Llama: ``attention_bias``;
    Falcon: ``bias``, which also switches on its fused QKV and MLP biases)."""
    kv_heads: Callable[[Any], int] | None = None
    """The KV-head count from the text config, where ``num_key_value_heads`` (else the head count) is not it."""
    mlp: str = "mlp"
    """Path, relative to one decoder block, of the MLP whose output is the ``mlp_out`` steering site."""
    mlp_out_linear: str = "mlp.down_proj"
    """Path, relative to one block, of the MLP's output projection (its bias carries a baked ``mlp_out`` or
    ``resid_post`` vector)."""
    mlp_bias: str = "none"
    """``"config"``: stock transformers builds the MLP biases when the config attribute ``mlp_bias_attr`` is true
    (Llama's ``mlp_bias``); ``"shared"``: the attention's switch (``bias_attr``) builds them too (Falcon's ``bias``);
    ``"always"``: the MLP output projection always has a bias; ``"none"``: it cannot have one, or the MLP output is
    normalised before it reaches the residual stream (Gemma), so ``mlp_out`` / ``resid_post`` are not bakeable."""
    mlp_linears: tuple[str, ...] = ()
    """With ``mlp_bias="config"``: the MLP's linear layers that the switch gives a bias (baking stores zeros)."""
    mlp_bias_attr: str = "mlp_bias"

    def __post_init__(self) -> None:
        if self.output_bias not in ("config", "always", "none", "llama"):
            raise ValueError(f"output_bias must be 'config', 'always', 'llama' or 'none', got {self.output_bias!r}")
        if self.mlp_bias not in ("config", "shared", "always", "none"):
            raise ValueError(f"mlp_bias must be 'config', 'shared', 'always' or 'none', got {self.mlp_bias!r}")
        if self.weight_layout not in ("out_in", "in_out"):
            raise ValueError(f"weight_layout must be 'out_in' or 'in_out', got {self.weight_layout!r}")

    @property
    def bakeable(self) -> bool:
        """Whether a model with a baked output bias can be saved and loaded by stock transformers."""
        return self.output_bias != "none"


_LLAMA_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers", "layers")
_LLAMA_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA_LIKE = ArchitectureSpec(_LLAMA_PATHS, "self_attn.o_proj", _LLAMA_ATTENTION, output_bias="config", mlp_bias="config",
                               mlp_linears=_LLAMA_MLP)
# Gemma's MLPs have no bias switch (and Gemma 2 and 3 normalise the MLP output before adding it)
_GEMMA = ArchitectureSpec(_LLAMA_PATHS, "self_attn.o_proj", _LLAMA_ATTENTION, output_bias="config")
# Mistral and Qwen2 hard-code o_proj without a bias: a baked one is saved as a Llama checkpoint with attention biases.
_SAVED_AS_LLAMA = ArchitectureSpec(_LLAMA_PATHS, "self_attn.o_proj", _LLAMA_ATTENTION, output_bias="llama")



def _falcon_kv_heads(cfg: Any) -> int:
    """Falcon-40B's layout (``new_decoder_architecture``) has ``num_kv_heads`` groups; Falcon-7B's multi-query
    layout one; otherwise every head has its own."""
    if getattr(cfg, "new_decoder_architecture", False):
        return int(cfg.num_kv_heads)
    if getattr(cfg, "multi_query", True):
        return 1
    return int(getattr(cfg, "num_kv_heads", None) or cfg.num_attention_heads)


# Falcon's config.bias switches on the biases of the fused QKV projection, the output projection (dense) and the MLP
_FALCON = ArchitectureSpec(
    ("transformer.h",), "self_attention.dense",
    ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    output_bias="config", bias_attr="bias", kv_heads=_falcon_kv_heads, mlp_out_linear="mlp.dense_4h_to_h", mlp_bias="shared")

_REGISTRY: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _SAVED_AS_LLAMA,
    "qwen2": _SAVED_AS_LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,
    "gemma3_text": _GEMMA,
    "gpt2": ArchitectureSpec(("transformer.h", "h"), "attn.c_proj", output_bias="always", weight_layout="in_out",
                             context_attrs=("n_positions", "max_position_embeddings"), mlp_out_linear="mlp.c_proj",
                             mlp_bias="always"),
    "gpt_neox": ArchitectureSpec(("gpt_neox.layers", "layers"), "attention.dense", output_bias="always",
                                 mlp_out_linear="mlp.dense_4h_to_h", mlp_bias="always"),
    "falcon": _FALCON,
}


def supported_architectures() -> list[str]:
    """The ``config.model_type`` values that have a registered layout, sorted."""
    return sorted(_REGISTRY)


def bakeable_architectures() -> list[str]:
    """The registered model types whose baked models stock transformers can load, sorted."""
    return sorted(t for t, spec in _REGISTRY.items() if spec.bakeable)


def architecture_spec(model_type: str) -> ArchitectureSpec | None:
    """The registered spec of a ``config.model_type``, or None."""
    return _REGISTRY.get(model_type)


def register_architecture(model_type: str, *, layers_paths: tuple[str, ...] | list[str], head_out: str,
                          attention_linears: tuple[str, ...] | list[str] = (), output_bias: str = "none",
                          weight_layout: str = "out_in",
                          context_attrs: tuple[str, ...] | list[str] = ("max_position_embeddings",),
                          bias_attr: str = "attention_bias", kv_heads: Callable[[Any], int] | None = None,
                          mlp: str = "mlp", mlp_out_linear: str = "mlp.down_proj", mlp_bias: str = "none",
                          mlp_linears: tuple[str, ...] | list[str] = (), mlp_bias_attr: str = "mlp_bias") -> ArchitectureSpec:
    """Teach the library a new ``config.model_type``: once registered, it is collectable, steerable and (with
    ``output_bias`` "config" or "always") bakeable.

    Example for a Llama-like model: ``register_architecture("olmo", layers_paths=["model.layers"],
    head_out="self_attn.o_proj", attention_linears=["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.o_proj"], output_bias="config")``. The head geometry is read from the config. ``mlp``: the MLP's
    path in a block (the ``mlp_out`` steering site); the other sites follow from ``head_out`` and the blocks.
    ``mlp_out_linear``, ``mlp_bias``, ``mlp_linears``, ``mlp_bias_attr``: how a baked ``mlp_out`` / ``resid_post``
    vector is stored (see :class:`ArchitectureSpec`).
    """
    spec = ArchitectureSpec(tuple(layers_paths), head_out, tuple(attention_linears), output_bias, weight_layout,
                            tuple(context_attrs), bias_attr, kv_heads, mlp, mlp_out_linear, mlp_bias, tuple(mlp_linears),
                            mlp_bias_attr)
    _REGISTRY[model_type] = spec
    return spec


def text_config(config: Any) -> Any:
    """The language-model part of a config (multimodal Gemma 3 nests it)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def context_length(model_or_config: Any) -> int | None:
    """The longest input the model takes, from the attribute its architecture names (``max_position_embeddings``;
    GPT-2's ``n_positions``) in its text config (Gemma 3 nests it), or None when the config does not say. The one
    place this is read."""
    config = getattr(model_or_config, "config", model_or_config)
    spec = _REGISTRY.get(getattr(config, "model_type", None) or "")
    attrs = spec.context_attrs if spec is not None else ("max_position_embeddings", "n_positions")
    cfg = text_config(config)
    for name in attrs:
        value = getattr(cfg, name, None)
        if value:
            return int(value)
    return None


def geometry_from_config(config: Any) -> HeadGeometry:
    """Head geometry from a Hugging Face config (its text part); ``head_dim`` defaults to hidden_size // heads
    and the KV-head count to the head count when the config leaves them out (an architecture whose config names it
    otherwise, like Falcon's ``num_kv_heads`` and ``multi_query``, says how in its spec's ``kv_heads``)."""
    cfg = text_config(config)
    spec = _REGISTRY.get(getattr(config, "model_type", None) or "") or _REGISTRY.get(getattr(cfg, "model_type", None) or "")
    num_heads = int(cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    head_dim = getattr(cfg, "head_dim", None) or hidden // num_heads
    kv = spec.kv_heads(cfg) if spec is not None and spec.kv_heads is not None else (
        getattr(cfg, "num_key_value_heads", None) or num_heads)
    return HeadGeometry(
        num_layers=int(cfg.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        hidden_size=hidden,
    )


def _in_features(module: nn.Module, spec: ArchitectureSpec) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2:
        return int(weight.shape[0] if spec.weight_layout == "in_out" else weight.shape[1])
    return None


@dataclass(frozen=True)
class ModelLayout:
    """An architecture resolved against one loaded model: concrete module paths and geometry."""

    model_type: str
    geometry: HeadGeometry
    layer_paths: tuple[str, ...]
    head_out_paths: tuple[str, ...]
    spec: ArchitectureSpec

    def head_out_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The module of ``layer`` whose input is the concatenated head outputs (o_proj, c_proj or dense)."""
        return model.get_submodule(self.head_out_paths[layer])

    def mlp_out_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The MLP's output projection of ``layer`` (down_proj, c_proj or dense_4h_to_h), whose bias carries a baked
        ``mlp_out`` / ``resid_post`` vector."""
        return self.layer_module(model, layer).get_submodule(self.spec.mlp_out_linear)

    def layer_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The decoder block at index ``layer`` (0-based)."""
        return model.get_submodule(self.layer_paths[layer])

    def site_hook(self, site: str, layer: int) -> tuple[str, str]:
        """Where a steering ``site`` of ``layer`` is hooked: (module path, ``"input"`` or ``"output"``)."""
        if site == "head_out":
            return self.head_out_paths[layer], "input"
        if site == "attn_out":
            return self.head_out_paths[layer], "output"
        if site == "mlp_out":
            return f"{self.layer_paths[layer]}.{self.spec.mlp}", "output"
        if site == "resid_post":
            return self.layer_paths[layer], "output"
        raise InvalidOptionError(f"unknown steering site {site!r}: one of {', '.join(SITES)}")


def _unsupported(model_type: str, why: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{why} (model_type {model_type!r}). Supported model types: {', '.join(supported_architectures())}. "
        "To add one, call iti.register_architecture(model_type, layers_paths=[...], head_out=...)."
    )


def model_layout(model: nn.Module) -> ModelLayout:
    """Resolve where the heads of ``model`` are; raise a clear error for unknown architectures."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError("the model has no .config: pass a Hugging Face PreTrainedModel")
    model_type = getattr(config, "model_type", None) or "?"
    spec = _REGISTRY.get(model_type)
    if spec is None:
        raise _unsupported(model_type, "unsupported architecture")
    geometry = geometry_from_config(config)
    layers_path = None
    for candidate in spec.layers_paths:
        try:
            found = model.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            layers_path = candidate
            break
    if layers_path is None:
        raise _unsupported(model_type, f"no decoder-block list at any of {list(spec.layers_paths)}")
    n = len(cast(nn.ModuleList, model.get_submodule(layers_path)))
    if n != geometry.num_layers:
        raise _unsupported(model_type, f"the config says {geometry.num_layers} layers but {layers_path} has {n}")
    layer_paths = tuple(f"{layers_path}.{i}" for i in range(n))
    head_out_paths = tuple(f"{p}.{spec.head_out}" for p in layer_paths)
    width = _in_features(model.get_submodule(head_out_paths[0]), spec)
    if width is not None and width != geometry.head_out_size:
        raise _unsupported(
            model_type,
            f"{head_out_paths[0]} takes {width} inputs, but heads x head_dim = "
            f"{geometry.num_heads} x {geometry.head_dim} = {geometry.head_out_size}",
        )
    return ModelLayout(model_type, geometry, layer_paths, head_out_paths, spec)


def model_device(model: nn.Module) -> torch.device:
    """The device of the input embeddings (where input ids must go when the model spans devices).

    An embedding whose weights accelerate offloaded (to the CPU or disk, under a ``device_map``) sits on the meta
    device between forward passes; its weights are brought to the execution device of its accelerate hook for each
    pass, so that is where the ids go."""
    try:
        embedding = cast(Any, model).get_input_embeddings()  # a transformers model
        device = embedding.weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device
    if device.type == "meta":
        device = _execution_device(model, embedding) or device
    return device


def _execution_device(model: nn.Module, module: nn.Module) -> torch.device | None:
    """The execution device of the innermost accelerate hook on ``module`` or one of its ancestors, if any."""
    name = next((n for n, m in model.named_modules() if m is module), None)
    if name is None:
        return None
    parts = name.split(".") if name else []
    found: torch.device | None = None
    for depth in range(len(parts) + 1):  # the model itself, then each ancestor, then the module: innermost wins
        hook = getattr(model.get_submodule(".".join(parts[:depth])), "_hf_hook", None)
        for h in [hook, *getattr(hook, "hooks", ())]:  # a SequentialHook holds several
            execution = getattr(h, "execution_device", None)
            if execution is not None:
                found = torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    return found
