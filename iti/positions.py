"""Which positions of each forward pass a steering shift lands on, worked out before the layers run.

Policies (``positions=``):

- ``"last"``: the last *position* of each forward pass (the last column of the batch); inside ``generate`` this
  is the last prompt token and then every generated token, exactly once each, with or without the KV cache
  (without the cache, every re-computation shifts the positions from the last prompt token on). Batches must be
  left-padded: a forward whose ``attention_mask`` marks the last column of some row as padding is refused with
  :class:`~iti.errors.PaddingError`, since the shift would land on a pad token.
- ``"all"``: every position (what a baked-in bias does).
- an ``int`` (of any integer type, >= 0): every absolute position from that index on.
- a tensor, numpy array, list or tuple ``[batch]``: a start index per row.

Anything else (a float, a bool, a negative start, another string) is refused with
:class:`~iti.errors.InvalidOptionError`. One tracker serves every hooked site of one application, so all sites
agree on the positions of a pass.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch

from .errors import InvalidOptionError, PaddingError
from .kv_cache import passed_cache

Positions = str | int | np.integer | torch.Tensor | Sequence[int] | np.ndarray


def base_model_path(model: torch.nn.Module) -> str:
    """The module path of ``model.base_model`` ("model" for Llama, "transformer" for GPT-2, "" if it is the model)."""
    base = model.base_model
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and getattr(model, prefix, None) is base:
        return prefix
    return next((name for name, module in model.named_modules() if module is base), "")


class PositionTracker:
    """Works out, before each forward pass, which positions of the current input get the shift."""

    def __init__(self, positions: Positions):
        self.positions = normalize_positions(positions)
        self.mask: torch.Tensor | None = None  # [batch, seq] bool, or None = every position
        self._prompt: torch.Tensor | None = None
        self._start = 0
        self._per_device: dict[tuple, torch.Tensor] = {}

    def observe(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = cast(torch.Tensor, ids if ids is not None else embeds)
        batch, seq = int(ref.shape[0]), int(ref.shape[1])
        past = past_length(kwargs)
        absolute = torch.arange(past, past + seq)
        self._per_device = {}
        p = self.positions
        if isinstance(p, str) and p == "all":
            self.mask = None
            return
        if isinstance(p, int):
            self.mask = (absolute >= p).expand(batch, seq)
            return
        if isinstance(p, torch.Tensor):
            start = p.reshape(-1).cpu()
            if start.shape[0] != batch:
                raise ValueError(f"positions has {start.shape[0]} start indices but the batch has {batch} rows")
            self.mask = absolute[None, :] >= start[:, None]
            return
        refuse_right_padding(kwargs.get("attention_mask"))
        # "last": a new prompt shifts its last token; a continuation (cached step, or a re-computation that
        # extends the recorded prompt) shifts everything from the last prompt token on.
        continuing = past > 0 or (
            ids is not None and self._prompt is not None and ids.shape[0] == self._prompt.shape[0]
            and seq > self._prompt.shape[1] and torch.equal(ids[:, : self._prompt.shape[1]].cpu(), self._prompt)
        )
        if not continuing:
            self._prompt = ids.detach().cpu() if ids is not None else None
            self._start = past + seq - 1
        self.mask = (absolute >= self._start).expand(batch, seq)

    def mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mask is None:
            return None
        key = (x.device, x.dtype)
        m = self._per_device.get(key)
        if m is None:
            if self.mask.shape != x.shape[:2]:
                raise RuntimeError(f"steering positions {tuple(self.mask.shape)} do not match the hooked tensor {tuple(x.shape[:2])}")
            m = self._per_device[key] = self.mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        return m


_POSITIONS_HELP = "'last', 'all', a start index (an int >= 0) or one start index per row (a 1-d sequence or tensor)"


def normalize_positions(positions: Any) -> str | int | torch.Tensor:
    """``"last"``/``"all"``, a non-negative Python int, or a 1-d CPU int64 tensor of per-row starts. Integers of any
    integer type (numpy, a 0-d tensor) are starts; lists, tuples and numpy arrays are per-row starts. Anything else
    (a bool, a float, another string, a negative start) is refused rather than read as something it is not."""
    if isinstance(positions, str):
        if positions not in ("last", "all"):
            raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}, got {positions!r}")
        return positions
    if isinstance(positions, (bool, np.bool_)):
        raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}, got the bool {positions!r}")
    if isinstance(positions, (list, tuple, np.ndarray, torch.Tensor)):
        arr = positions.detach().cpu().numpy() if isinstance(positions, torch.Tensor) else np.asarray(positions)
        if arr.ndim == 0:
            return normalize_positions(arr.item())
        if arr.ndim != 1 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_)):
            raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}; got a {arr.dtype} array of shape {arr.shape}")
        if (arr < 0).any():
            raise InvalidOptionError(f"positions: start indices must be >= 0, got {arr.tolist()}")
        return torch.from_numpy(arr.astype(np.int64))
    if isinstance(positions, (int, np.integer)):
        if positions < 0:
            raise InvalidOptionError(f"positions: a start index must be >= 0, got {int(positions)} (a negative start would "
                                     "shift every position; pass 'all' for that)")
        return int(positions)
    raise InvalidOptionError(f"positions must be {_POSITIONS_HELP}, got {type(positions).__name__} {positions!r}")


def refuse_right_padding(attention_mask: torch.Tensor | None) -> None:
    """positions="last" shifts the last column; a row that ends in padding there would get the shift on a pad token."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2 or attention_mask.shape[1] == 0:
        return
    padded = (attention_mask[:, -1] == 0).nonzero().reshape(-1).tolist()
    if padded:
        raise PaddingError(
            f"positions='last' shifts the last position of each forward pass, but row(s) {padded[:10]} of this batch "
            f"({attention_mask.shape[0]} rows) end in padding (right padding), so the shift would land on a pad token "
            "and generation would continue after the pads. Pad on the left: tokenizer.padding_side = 'left' "
            "(iti.load_model returns a tokenizer set up so), or steer one prompt at a time."
        )


def past_length(kwargs: dict) -> int:
    cache_position = kwargs.get("cache_position")
    if cache_position is not None and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    past = passed_cache(kwargs)
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple of (key, value) per layer
        return int(past[0][0].shape[-2])
    except (TypeError, IndexError):
        return 0
