"""The TruthfulQA experiment's errors (each also an :class:`~iti.errors.ItiError` and the builtin a caller would
catch)."""
from __future__ import annotations

from ..errors import ItiError


class JudgeError(ItiError, RuntimeError):
    """A True/Info judge that could not be reached or gave an answer that cannot be read."""


class JudgeModelError(ItiError, ValueError):
    """A model that cannot serve as an in-process True/Info judge: its tokenizer has no single " yes" token to
    read the score from."""
