"""The KV cache under both transformers naming schemes.

transformers 5 renamed the forward argument and the output field ``past_key_values`` to ``cache`` and warns on the
old name; earlier versions only know the old one. Code that drives or reads a cache by hand goes through these
helpers, so the two names live in this module only.
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch

_NAMES = ("cache", "past_key_values")  # transformers 5 first, then earlier versions


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes its KV cache under (looked up once per model class: decode loops call this
    every step)."""
    return _cache_argument(type(model))  # type: ignore[arg-type]  # classes hash; torch's Module.__hash__ stub says not


@functools.cache
def _cache_argument(cls: type[torch.nn.Module]) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return _NAMES[1]
    return _NAMES[0] if _NAMES[0] in params else _NAMES[1]


def with_cache(model: torch.nn.Module, past: Any) -> dict[str, Any]:
    """Keyword arguments passing ``past`` (which may be None) as the model's KV cache."""
    return {cache_argument(model): past}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned, whichever field holds it."""
    return next((c for c in (getattr(output, n, None) for n in _NAMES) if c is not None), None)


def passed_cache(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache a forward was called with (a forward pre-hook's kwargs), whichever name it came under."""
    return next((kwargs[n] for n in _NAMES if kwargs.get(n) is not None), None)


def fork_cache(cache: Any) -> Any:
    """A copy of a KV cache that later selects, repeats and updates will not write through to the original (a
    shared prefix's cache, forked for every batch that continues from it).

    transformers' cache layers replace their tensors (index, cat) rather than writing into them, so copying
    the containers is enough; unknown cache types are deep-copied.
    """
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list) and all(hasattr(layer, "keys") for layer in layers):
        new = copy.copy(cache)
        new.layers = [copy.copy(layer) for layer in layers]
        return new
    return copy.deepcopy(cache)


class SharedPrefix:
    """Tokens every row of a job starts with (an instruction, a few-shot primer), encoded once; each batch continues
    on a fork of that cache (:func:`fork_cache`), so the prefix is neither recomputed nor written through. Used by
    MC scoring and greedy generation; each row's own part follows it in ``attention`` order."""

    def __init__(self, model: torch.nn.Module, ids: list[int], device: Any):
        self.length = len(ids)
        self.cache = returned_cache(model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True))

    def batch(self, rows: int) -> Any:
        """A fork of the prefix's cache repeated for ``rows`` rows, to continue on."""
        past = fork_cache(self.cache)
        past.batch_repeat_interleave(rows)
        return past

    def attention(self, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask of rows continuing the prefix: ones over the prefix, then each row's own ``mask``."""
        return torch.cat([torch.ones((mask.shape[0], self.length), dtype=torch.long), mask], dim=1)
