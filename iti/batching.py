"""Turning prompts into batches: tokenizing, the context check, length-sorted batch plans and padding.

Shared by collection, MC scoring, generation, CE/KL and the experiments, so that every batched forward pass pads
and positions its rows the same way.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .architectures import context_length
from .errors import EmptyInputError, PromptTooLongError


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt, with the tokenizer's default special tokens (as honest_llama does)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    if len(prompts) == 0:
        raise EmptyInputError("the prompt list is empty: nothing to collect")
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    for i, row in enumerate(ids):
        if len(row) == 0:
            raise EmptyInputError(f"prompt {i} ({prompts[i]!r}) tokenizes to no tokens")
    return [list(map(int, row)) for row in ids]


def check_context(model: nn.Module, encoded: Sequence[Sequence[int]]) -> None:
    """Refuse prompts longer than the model's context instead of failing deep inside the forward pass."""
    limit = context_length(model)
    if limit is None:
        return
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
    if len(encoded[longest]) > int(limit):
        raise PromptTooLongError(f"prompt {longest} has {len(encoded[longest])} tokens, more than the model's context of {limit}")


def plan_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices of each batch: longest first, ties in prompt order; deterministic for given lengths."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lens = np.asarray(lengths)
    order = np.lexsort((np.arange(len(lens)), -lens))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token rows to one width: (ids, attention mask), both ``[B, S]`` long; with ``padding_side="left"``
    the real tokens end at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if padding_side == "right" else slice(width - len(r), width)
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """Arguments that make a feature-only forward cheaper: no KV cache, logits for one position only."""
    kwargs: dict[str, Any] = {"use_cache": False}
    try:
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            kwargs["logits_to_keep"] = 1
    except (TypeError, ValueError):
        pass
    return kwargs


def batch_inputs(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Model inputs of one batch on ``device``; with left padding also ``position_ids`` that count real tokens
    only."""
    ids, mask = pad_batch(rows, pad_id, padding_side)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if padding_side == "left":  # positions must count real tokens only
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
    return inputs


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS (decoder-only models often have no
    pad token), else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def eos_token_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """Every id that ends a generated row: the generation config's, the model config's and the tokenizer's (chat
    models often list several: SmolLM2's ``<|im_end|>`` beside ``<|endoftext|>``)."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        e = getattr(src, "eos_token_id", None)
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    return ids
