"""Grouped-query attention on the CPU without copying key/value heads.

Whenever a forward passes an attention mask (MC scoring and batched generation always do), transformers' SDPA path
repeats every key/value head for each query head of its group (``repeat_kv``) before it calls torch, a copy of the
whole KV cache per layer and forward. Under a long shared prefix (a few-shot primer) that copy is a large part of the
time. torch's CPU kernel takes the grouped heads as they are (``enable_gqa``) and computes the same numbers, bit for
bit on SmolLM2 (``benchmarks/bench_mc.py``). transformers makes that call when ``TRANSFORMERS_SDPA_FORCE_GQA=1`` (read at
every attention call since 5.x; older versions ignore it). On CUDA a masked call with ``enable_gqa`` would fall back to
the slow math kernel, so the variable is set only around the forward passes of a model that sits wholly on the CPU,
and restored after each (also when the forward raises).
"""
from __future__ import annotations

import os
from typing import Any

import torch

FLAG = "TRANSFORMERS_SDPA_FORCE_GQA"


class GroupedKVHandle:
    """The two hooks :func:`read_grouped_kv_in_place` registers; ``remove()`` takes both off."""

    def __init__(self, handles: list[Any]):
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _grouped(model: torch.nn.Module) -> bool:
    config: Any = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads, kv = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
    return bool(heads and kv and kv < heads and getattr(config, "_attn_implementation", None) == "sdpa")


def read_grouped_kv_in_place(model: torch.nn.Module) -> GroupedKVHandle | None:
    """Make ``model``'s forward passes hand grouped key/value heads to torch's SDPA kernel without repeating them,
    where that is the same computation: SDPA attention, fewer key/value heads than query heads, every parameter on
    the CPU. Returns the handle that undoes it, or None where nothing applies."""
    if not _grouped(model) or any(p.device.type != "cpu" for p in model.parameters()):
        return None
    saved: list[str | None] = []

    def before(module: torch.nn.Module, args: Any) -> None:
        saved.append(os.environ.get(FLAG))
        os.environ[FLAG] = "1"

    def after(module: torch.nn.Module, args: Any, output: Any) -> None:
        old = saved.pop() if saved else None
        if old is None:
            os.environ.pop(FLAG, None)
        else:
            os.environ[FLAG] = old

    return GroupedKVHandle([model.register_forward_pre_hook(before),
                            model.register_forward_hook(after, always_call=True)])
