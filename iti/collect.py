"""Batched, length-sorted collection of per-head activations (in memory).

honest_llama runs one prompt per forward pass. Here prompts are tokenized once, sorted by length (longest
first, so an out-of-memory batch size shows up at once), cut into batches, right-padded, and run with the
trace selecting each row's last real token. The result is returned in the original prompt order.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ModelLayout, model_device, model_layout
from .batching import batch_inputs, check_context, encode_prompts, forward_kwargs, pad_token_id, plan_batches
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
                resid = None if not residual else parts[0][1] if len(parts) == 1 else torch.cat([cast(torch.Tensor, r) for _, r in parts])  # residual: set
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
