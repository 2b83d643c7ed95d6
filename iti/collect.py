"""Batched, length-sorted collection of per-head activations (in memory).

honest_llama runs one prompt per forward pass. Here prompts are tokenized once, sorted by length (longest
first, so an out-of-memory batch size shows up at once), cut into batches, right-padded, and run with the
trace selecting each row's last real token. The result is returned in the original prompt order.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ModelLayout, model_device, model_layout
from .errors import EmptyInputError
from .hooks import HeadTrace
from .oom import AdaptiveBatchSize


@dataclass
class HeadActivations:
    """Per-head activations of a list of prompts, in prompt order.

    ``heads``: [N, L, H, D] for ``positions="last"``; for ``"all"`` a list of [S_i, L, H, D] tensors.
    ``residual``: the residual stream after each decoder block, [N, L, hidden] (or a list), when requested.
    """

    heads: torch.Tensor | list[torch.Tensor]
    residual: torch.Tensor | list[torch.Tensor] | None
    lengths: np.ndarray
    positions: str


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
    from .architectures import text_config

    limit = getattr(text_config(model.config), "max_position_embeddings", None)
    if limit is None:
        return
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
    if len(encoded[longest]) > int(limit):
        raise ValueError(f"prompt {longest} has {len(encoded[longest])} tokens, more than the model's context of {limit}")


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices of each batch: longest first, ties in prompt order; deterministic for given lengths."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    order = np.lexsort((np.arange(len(lengths)), -lengths))
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


def iter_last_token_batches(
    model: nn.Module,
    encoded: Sequence[Sequence[int]],
    batches: Sequence[np.ndarray],
    *,
    pad_id: int,
    residual: bool = False,
    layout: ModelLayout | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | tqdm = True,
    desc: str = "collecting",
    batch_size: AdaptiveBatchSize | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """Run the given batches and yield (row indices, heads [b, L, H, D], residual [b, L, hidden] or None).

    A batch that runs out of memory is run in smaller parts (``batch_size`` keeps the size that fit, shared
    across calls if given) and still yielded whole, so callers that track batches are unaffected."""
    layout = layout or model_layout(model)
    device = model_device(model)
    kwargs = forward_kwargs(model)
    sizes = batch_size or AdaptiveBatchSize(max((len(b) for b in batches), default=1), what="prompt")
    bar = progress if isinstance(progress, tqdm) else tqdm(total=sum(len(b) for b in batches), desc=desc, unit="prompt", disable=not progress)
    try:
        with torch.inference_mode(), HeadTrace(model, residual=residual, layout=layout, device="cpu", dtype=dtype) as trace:
            def run(part: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
                try:
                    inputs = batch_inputs([encoded[i] for i in part], pad_id, device)
                    trace.set_positions("last", inputs["attention_mask"])
                    model(**inputs, **kwargs)
                    return trace.stacked_heads(), (trace.stacked_residual() if residual else None)
                finally:
                    trace.clear()

            for idx in batches:  # a batch that runs out of memory runs in parts and is yielded whole
                parts = sizes.run(idx, run)
                heads = parts[0][0] if len(parts) == 1 else torch.cat([h for h, _ in parts])
                resid = None if not residual else parts[0][1] if len(parts) == 1 else torch.cat([r for _, r in parts])
                bar.update(len(idx))
                yield idx, heads, resid
    finally:
        if bar is not progress:
            bar.close()


def collect_head_activations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    positions: str = "last",
    batch_size: int = 16,
    *,
    residual: bool = False,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> HeadActivations:
    """Per-head attention outputs of each prompt, batched and length-sorted, in prompt order.

    ``positions="last"`` (honest_llama's choice) keeps each prompt's last non-pad token (whatever the padding
    side); ``"all"`` keeps every token. (``Intervention.applied(positions="last")`` instead steers the last column
    of each forward pass, and needs left-padded batches.)
    """
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    layout = model_layout(model)
    encoded = encode_prompts(tokenizer, prompts)
    check_context(model, encoded)
    lengths = np.array([len(r) for r in encoded])
    batches = plan_batches(lengths, batch_size)
    pad_id = pad_token_id(tokenizer)
    if positions == "last":
        g = layout.geometry
        heads = torch.empty((len(encoded), g.num_layers, g.num_heads, g.head_dim), dtype=dtype)
        resid = torch.empty((len(encoded), g.num_layers, g.hidden_size), dtype=dtype) if residual else None
        for idx, h, r in iter_last_token_batches(model, encoded, batches, pad_id=pad_id, residual=residual, layout=layout, dtype=dtype, progress=progress):
            t = torch.from_numpy(idx)
            heads[t] = h
            if resid is not None and r is not None:
                resid[t] = r
        return HeadActivations(heads, resid, lengths, positions)

    out_heads: list[torch.Tensor | None] = [None] * len(encoded)
    out_resid: list[torch.Tensor | None] = [None] * len(encoded)
    device = model_device(model)
    kwargs = forward_kwargs(model)
    sizes = AdaptiveBatchSize(batch_size, what="prompt")
    with torch.inference_mode(), HeadTrace(model, positions="all", residual=residual, layout=layout, dtype=dtype) as trace:
        def run(part: np.ndarray) -> None:
            try:
                model(**batch_inputs([encoded[i] for i in part], pad_id, device), **kwargs)
                h = trace.stacked_heads()  # [b, S, L, H, D]
                r = trace.stacked_residual() if residual else None
                for j, i in enumerate(part):
                    out_heads[i] = h[j, : lengths[i]].clone()
                    if r is not None:
                        out_resid[i] = r[j, : lengths[i]].clone()
            finally:
                trace.clear()

        for idx in tqdm(batches, desc="collecting", unit="batch", disable=not progress):
            sizes.run(idx, run)
    return HeadActivations(out_heads, out_resid if residual else None, lengths, positions)  # type: ignore[arg-type]
