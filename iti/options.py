"""Checks of options and config fields, run before any model loads or any file is written.

Every checker raises :class:`~iti.errors.InvalidOptionError` with one line, ``--name: <what is allowed>, got
<value>``. ``name`` is the option's underscore spelling (the dashed one is accepted too), which is also the name
of the config field it fills, so the message reads the same from the command line and from Python.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InvalidOptionError


def refuse(name: str, allowed: str, value: Any = None, *, shown: str | None = None) -> InvalidOptionError:
    """The error for ``--name`` holding ``value``; ``shown`` replaces the printed value."""
    return InvalidOptionError(f"--{name}: {allowed}, got {shown if shown is not None else _show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        return repr(str(value))
    return str(value)


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)


def _interval(lo, hi, lo_open: bool, hi_open: bool, integer: bool) -> str:
    kind = "an integer" if integer else "a number" if hi is not None else "a finite number"
    if lo is not None and hi is not None:
        if integer and not lo_open and not hi_open:
            return f"{kind} between {lo} and {hi}"
        return f"{kind} in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {_num(hi)}"
    return f"a finite {'integer' if integer else 'number'}"


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, integer: bool = False, why: str | None = None) -> None:
    """``value`` is a finite number (an integer with ``integer``) within ``lo``..``hi`` (``None`` = unbounded; the
    ``*_open`` flags exclude the bound); ``why`` is added to the message in parentheses."""
    allowed = _interval(lo, hi, lo_open, hi_open, integer) + (f" ({why})" if why else "")
    if not _is_number(value, integer) or not math.isfinite(value):
        raise refuse(name, allowed, value)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise refuse(name, allowed, value)
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise refuse(name, allowed, value)


def check_positive_int(name: str, value: Any, *, none_ok: bool = False, why: str | None = None) -> None:
    """A count or size: an integer >= 1 (``None`` passes with ``none_ok``, meaning "all" or "default")."""
    if value is None and none_ok:
        return
    check_range(name, value, 1, integer=True, why=why)


def check_seed(name: str, value: Any) -> None:
    """A random seed: an integer >= 0 (numpy's generators refuse negative seeds)."""
    check_range(name, value, 0, integer=True)


def check_ratio(name: str, value: Any, *, one_ok: bool = False, why: str | None = None) -> None:
    """A fraction in the open interval (0, 1), or (0, 1] with ``one_ok``."""
    check_range(name, value, 0.0, 1.0, lo_open=True, hi_open=not one_ok, why=why)


def check_finite_nonneg(name: str, value: Any, *, none_ok: bool = False) -> None:
    """A strength such as alpha: finite and >= 0 (to steer the other way, negate the directions)."""
    if value is None and none_ok:
        return
    check_range(name, value, 0.0)


def check_each(check, name: str, values: Iterable[Any], **kwargs) -> None:
    """Apply ``check(name, value, **kwargs)`` to every value of a list option."""
    for v in values:
        check(name, v, **kwargs)


def check_choice(name: str, value: Any, choices: Iterable[str], *, none_ok: bool = False) -> None:
    """``value`` is one of ``choices`` (``None`` passes with ``none_ok``)."""
    if value is None and none_ok:
        return
    choices = list(choices)
    if value not in choices:
        raise refuse(name, f"one of {', '.join(choices)}", value)


def check_existing_path(name: str, value: str | os.PathLike | None, *, kind: str = "dir") -> None:
    """A path that must already exist: ``kind`` "dir", "file" or "any"; ``None`` (not given) passes."""
    if value is None:
        return
    p = Path(value).expanduser()
    ok = {"dir": p.is_dir, "file": p.is_file, "any": p.exists}[kind]()
    what = {"dir": "an existing directory", "file": "an existing file", "any": "an existing path"}[kind]
    if not ok:
        raise refuse(name, what, value)


def check_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n, else the ``--shard`` error."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "") if isinstance(text, str) else None
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise refuse("shard", "i/n with 0 <= i < n (e.g. 0/2)", text)
    return int(m.group(1)), int(m.group(2))


# --- k-fold splits -------------------------------------------------------------------------------------------

def _folds_ok(n: int, k: int, r: float) -> bool:
    """Whether every fold of ``run_validation``'s split has a test, a training and a validation question: ``n``
    questions in ``k`` folds by ``np.array_split`` (sizes n // k and n // k + 1), each fold's other questions split
    by ``split_questions`` (``int(m * (1 - r))`` of them for training, the rest for validation)."""
    if not 2 <= k <= n:
        return False
    for test in {n // k, -(-n // k)}:
        train = int((n - test) * (1 - r))
        if test < 1 or train < 1 or n - test - train < 1:
            return False
    return True


def min_questions(num_fold: int, val_ratio: float) -> int:
    """The fewest questions for which every one of ``num_fold`` folds has a test, a training and a validation
    question at this ``val_ratio`` (which must be in (0, 1))."""
    lo, hi = max(3, int(num_fold)) - 1, max(3, int(num_fold))  # _folds_ok(lo) is False; more questions never hurt
    while not _folds_ok(hi, num_fold, val_ratio):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _folds_ok(mid, num_fold, val_ratio) else (mid, hi)
    return hi


def check_folds(num_questions: int, num_fold: Any, val_ratio: Any, *, questions_option: str, source: str) -> None:
    """``--num_fold`` and ``--val_ratio`` against the number of questions: ``val_ratio`` in (0, 1), ``num_fold``
    between 2 and the number of questions, and every fold with at least one test, one training and one validation
    question. ``questions_option`` is blamed when no fold count would do; ``source`` says where the question count
    comes from (for the messages)."""
    check_ratio("val_ratio", val_ratio)
    check_range("num_fold", num_fold, 2, integer=True)
    n, k, r = int(num_questions), int(num_fold), float(val_ratio)
    if _folds_ok(n, k, r):
        return
    working = [j for j in range(2, n + 1) if _folds_ok(n, j, r)]  # contiguous: more folds leave more training questions
    if working and k > n:
        raise refuse("num_fold", f"an integer between {working[0]} and {n} (the number of questions: {source})", k)
    smallest_train = n - -(-n // k) if k <= n else 0  # the questions beside the largest test fold
    if k <= n and smallest_train >= 2:  # some ratio would leave a training and a validation question
        top = math.floor((1 - 1 / smallest_train) * 1000) / 1000
        raise refuse("val_ratio", f"a number in (0, {top:g}] so that each of {k} folds of {n} questions ({source}) keeps "
                                  f"a training and a validation question", r)
    if working:
        span = f"an integer between {working[0]} and {n}" if working[0] < n else str(n)
        raise refuse("num_fold", f"{span} for {n} questions ({source}), so that each fold keeps a test, a training and "
                                 f"a validation question", k)
    need = min_questions(max(k, 2), r)
    raise refuse(questions_option, f"at least {need} questions for {k} folds at val_ratio {r:g} (each fold needs a test, "
                                   f"a training and a validation question)",
                 shown=str(n) if source == f"--{questions_option}" else f"{n} ({source})")
