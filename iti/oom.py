"""Out-of-memory fallback for batched work: a batch that does not fit is split in halves and run again.

Why: the right batch size depends on the device, the dtype and the longest prompt, and a long collection or
generation run that dies at batch 900 of 1,000 loses time even when resumable. The smaller size that worked is
kept for the rest of the run and printed, with the flag that starts there next time. Results do not depend on
the batch size (rows are independent), so a lowered batch size changes speed, not output.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from .errors import OutOfMemoryError

Rows = TypeVar("Rows", Sequence[Any], np.ndarray)  # what can be cut into chunks: a sequence or an index array
R = TypeVar("R")

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS/XPU out-of-memory errors, torch's CPU allocator failing and Python's MemoryError."""
    if isinstance(err, OutOfMemoryError):
        return False  # already the final word: nothing smaller to try
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _OOM_MESSAGES)


def free_memory() -> None:
    """Drop what a failed forward pass left behind before trying again."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class AdaptiveBatchSize:
    """The batch size to use now: starts at the requested one and halves on each out-of-memory error.

    ``what`` names the rows in messages ("prompt", "answer"), ``flag`` is the option a user sets to start at the
    size that worked."""

    def __init__(self, batch_size: int, *, what: str = "row", flag: str = "--batch_size") -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.limit, self.requested, self.what, self.flag = int(batch_size), int(batch_size), what, flag

    def shrink(self, failed: int, err: BaseException) -> int:
        """Record that ``failed`` rows did not fit and return the new limit; raise when ``failed`` was one row."""
        if failed <= 1:
            raise OutOfMemoryError(
                f"out of memory with a single {self.what} per batch ({type(err).__name__}: {str(err)[:200]}); nothing "
                "smaller to try: free memory, load the model in a smaller dtype (--dtype bfloat16/float16), spread it "
                "over devices with device_map, or use shorter inputs") from err
        if failed // 2 >= self.limit:
            return self.limit  # a chunk planned before the limit last dropped: no news
        self.limit = max(1, failed // 2)
        print(f"[iti] out of memory with {failed} {self.what}s per batch; going on with {self.limit}. "
              f"Pass {self.flag} {self.limit} to start there.", file=sys.stderr, flush=True)
        return self.limit

    def run(self, rows: Rows, fn: Callable[[Rows], R]) -> list[R]:
        """``fn`` over consecutive chunks of ``rows`` of at most ``limit`` rows, in order; a chunk that runs out
        of memory is split in halves and retried."""
        pending = [rows[i : i + self.limit] for i in range(0, len(rows), self.limit)]
        out: list[R] = []
        while pending:
            chunk = pending.pop(0)
            if len(chunk) > self.limit:  # planned before the limit dropped
                pending[:0] = [chunk[i : i + self.limit] for i in range(0, len(chunk), self.limit)]
                continue
            try:
                out.append(fn(chunk))
                continue
            except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
                if not is_out_of_memory(err):
                    raise
                half = self.shrink(len(chunk), err)
            free_memory()  # outside the handler, so the failed frames (and their tensors) are gone
            pending[:0] = [chunk[i : i + half] for i in range(0, len(chunk), half)]
        return out
