"""Per-architecture knowledge: where the per-head attention outputs are, and the head geometry.

The one fact ITI needs from a model is the module whose *input* is the concatenation of the per-head attention
outputs (before the output projection): ``o_proj`` in Llama-like models, ``attn.c_proj`` in GPT-2,
``attention.dense`` in GPT-NeoX. To support a new architecture, call :func:`register_architecture`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import HeadIndexError, UnsupportedArchitectureError


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
    def from_dict(cls, d: dict[str, Any]) -> "HeadGeometry":
        """Inverse of :meth:`to_dict`: reads the five sizes as ints and ignores any other keys."""
        return cls(**{k: int(d[k]) for k in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size")})


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where things are in one family of models, as module paths relative to the loaded model."""

    layers_paths: tuple[str, ...]
    """Candidate paths of the ``nn.ModuleList`` of decoder blocks; the first that exists is used."""
    head_out: str
    """Path, relative to one decoder block, of the module whose input is the concatenated head outputs."""


_LLAMA_LIKE = ArchitectureSpec(
    layers_paths=("model.layers", "model.language_model.layers", "language_model.model.layers", "layers"),
    head_out="self_attn.o_proj",
)

_REGISTRY: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gpt2": ArchitectureSpec(layers_paths=("transformer.h", "h"), head_out="attn.c_proj"),
    "gpt_neox": ArchitectureSpec(layers_paths=("gpt_neox.layers", "layers"), head_out="attention.dense"),
}


def supported_architectures() -> list[str]:
    """The ``config.model_type`` values that have a registered layout, sorted."""
    return sorted(_REGISTRY)


def register_architecture(model_type: str, *, layers_paths: tuple[str, ...] | list[str], head_out: str) -> None:
    """Teach the library a new ``config.model_type``.

    Example for a Llama-like model: ``register_architecture("olmo", layers_paths=["model.layers"],
    head_out="self_attn.o_proj")``. The head geometry is read from the config.
    """
    _REGISTRY[model_type] = ArchitectureSpec(tuple(layers_paths), head_out)


def text_config(config: Any) -> Any:
    """The language-model part of a config (multimodal Gemma 3 nests it)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def geometry_from_config(config: Any) -> HeadGeometry:
    """Head geometry from a Hugging Face config (its text part); ``head_dim`` defaults to hidden_size // heads
    and the KV-head count to the head count when the config leaves them out."""
    cfg = text_config(config)
    num_heads = int(cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    head_dim = getattr(cfg, "head_dim", None) or hidden // num_heads
    kv = getattr(cfg, "num_key_value_heads", None) or num_heads
    return HeadGeometry(
        num_layers=int(cfg.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        hidden_size=hidden,
    )


def _in_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2: weight is [in, out]
        return int(weight.shape[0])
    return None


@dataclass(frozen=True)
class ModelLayout:
    """An architecture resolved against one loaded model: concrete module paths and geometry."""

    model_type: str
    geometry: HeadGeometry
    layer_paths: tuple[str, ...]
    head_out_paths: tuple[str, ...]

    def head_out_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The module of ``layer`` whose input is the concatenated head outputs (o_proj, c_proj or dense)."""
        return model.get_submodule(self.head_out_paths[layer])

    def layer_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The decoder block at index ``layer`` (0-based)."""
        return model.get_submodule(self.layer_paths[layer])


def _unsupported(model_type: str, why: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{why} (model_type {model_type!r}). Supported model types: {', '.join(supported_architectures())}. "
        "To add one, call iti.architectures.register_architecture(model_type, layers_paths=[...], head_out=...)."
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
    n = len(model.get_submodule(layers_path))
    if n != geometry.num_layers:
        raise _unsupported(model_type, f"the config says {geometry.num_layers} layers but {layers_path} has {n}")
    layer_paths = tuple(f"{layers_path}.{i}" for i in range(n))
    head_out_paths = tuple(f"{p}.{spec.head_out}" for p in layer_paths)
    width = _in_features(model.get_submodule(head_out_paths[0]))
    if width is not None and width != geometry.head_out_size:
        raise _unsupported(
            model_type,
            f"{head_out_paths[0]} takes {width} inputs, but heads x head_dim = "
            f"{geometry.num_heads} x {geometry.head_dim} = {geometry.head_out_size}",
        )
    return ModelLayout(model_type, geometry, layer_paths, head_out_paths)


def model_device(model: nn.Module) -> torch.device:
    """The device of the input embeddings (where input ids must go when the model spans devices)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device
