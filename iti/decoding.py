"""The one step-by-step decode loop on a KV cache: TruthfulQA's greedy answers and the faithfulness wing's sampler
both run it, each with its own rule for the next token and for when a row has ended.

A row leaves the batch when it ends (its cache rows with it), so no forward pass is spent on finished rows; the
loop stops when every row has ended or after ``max_steps`` tokens."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .architectures import model_device
from .kv_cache import returned_cache, with_cache

#: the next token of each active row: (logits [rows, vocab] on the CPU, the active rows' ids, every row's tokens so
#: far) -> tokens [rows]
NextTokens = Callable[[torch.Tensor, Sequence[int], list[list[int]]], torch.Tensor]
#: whether a row has ended after its latest token: its tokens so far -> bool
Ended = Callable[[list[int]], bool]


def decode(model: torch.nn.Module, step_ids: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor, past: Any, *,
           max_steps: int, next_tokens: NextTokens, ended: Ended) -> tuple[list[list[int]], list[bool]]:
    """Decode from ``step_ids`` (the prompt part not in ``past``; ``attn`` covers cache and step, ``positions`` the
    step's position ids) for up to ``max_steps`` tokens. Returns each row's tokens and whether it ended (by ``ended``)
    rather than at the step limit. Index tensors stay on the CPU: each cache layer lives on its own layer's device."""
    device = model_device(model)
    rows = step_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    active = list(range(rows))  # batch row -> row
    for _ in range(max_steps):
        out = model(input_ids=step_ids.to(device), attention_mask=attn.to(device), position_ids=positions.to(device),
                    **with_cache(model, past), use_cache=True, logits_to_keep=1)
        past = returned_cache(out)
        nxt = next_tokens(out.logits[:, -1].cpu(), active, tokens).cpu()
        going = []  # batch rows that have not ended
        for b, (r, t) in enumerate(zip(active, nxt.tolist())):
            tokens[r].append(t)
            done[r] = ended(tokens[r])
            if not done[r]:
                going.append(b)
        if not going:
            break
        step_ids, positions = nxt[:, None], positions[:, -1:] + 1
        attn = torch.cat([attn, torch.ones((len(active), 1), dtype=attn.dtype, device=attn.device)], 1)
        if len(going) < len(active):  # finished rows leave the batch, their cache rows with them
            keep = torch.tensor(going)
            past.batch_select_indices(keep)
            active = [active[b] for b in going]
            step_ids, positions, attn = step_ids[keep], positions[keep.to(positions.device)], attn[keep.to(attn.device)]
    return tokens, done
