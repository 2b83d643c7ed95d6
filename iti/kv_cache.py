"""The KV cache under both transformers naming schemes.

transformers 5 renamed the forward argument and the output field ``past_key_values`` to ``cache`` and warns on the
old name; earlier versions only know the old one. Code that drives a cache by hand goes through these two helpers.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes its KV cache under."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def with_cache(model: torch.nn.Module, past: Any) -> dict[str, Any]:
    """Keyword arguments passing ``past`` (which may be None) as the model's KV cache."""
    return {cache_argument(model): past}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned, whichever field holds it."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
