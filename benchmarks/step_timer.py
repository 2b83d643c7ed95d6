"""Where generation time goes: wall time inside the model's forward (prefill and decode steps apart) and inside the
faithfulness sampler, the rest being Python, cache bookkeeping and, for transformers' ``generate``, its logits
processors and stopping criteria."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

import iti.faithfulness.generate as faithfulness_generate


class StepTimer:
    """Times every forward of ``model`` (a call with one token per row is a decode step, more is a prefill) and
    every call of the faithfulness sampler while the block runs, by wrapping them; the wrappers are removed on exit."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.seconds = {"prefill": 0.0, "decode": 0.0, "sampling": 0.0}
        self.calls = {"prefill": 0, "decode": 0, "sampling": 0}
        self.total = 0.0

    def _timed(self, fn: Callable[..., Any], kind: Callable[..., str]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                k = kind(*args, **kwargs)
                self.seconds[k] += time.perf_counter() - t
                self.calls[k] += 1
        return wrapper

    def __enter__(self) -> StepTimer:
        def forward_kind(*args: Any, **kwargs: Any) -> str:
            ids = kwargs.get("input_ids", args[0] if args else None)
            return "decode" if ids is not None and ids.shape[-1] == 1 else "prefill"

        self._forward = self.model.forward
        self._own_forward = "forward" in vars(self.model)  # accelerate's hooks set one on the instance
        self._sampler = faithfulness_generate._sample_next
        self.model.forward = self._timed(self._forward, forward_kind)  # type: ignore[method-assign]
        faithfulness_generate._sample_next = self._timed(self._sampler, lambda *a, **k: "sampling")
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.total = time.perf_counter() - self._start
        if self._own_forward:
            self.model.forward = self._forward  # type: ignore[method-assign]
        else:
            del self.model.forward  # the class's forward shows through again
        faithfulness_generate._sample_next = self._sampler

    def breakdown(self) -> dict[str, float]:
        """Seconds per part, "other" being the total minus the timed parts, and each part's share of the total."""
        parts = dict(self.seconds)
        parts["other"] = max(0.0, self.total - sum(self.seconds.values()))
        out = {f"{k}_s": v for k, v in parts.items()}
        out.update({f"{k}_share": v / self.total for k, v in parts.items()})
        out["total_s"] = self.total
        out.update({f"{k}_calls": float(v) for k, v in self.calls.items()})
        return out
