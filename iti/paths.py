"""Where data sets and the model cache live.

Data sets are looked up in a fixed order so that the same command works for a developer with a checkout
beside ``shared/``, a user with ``ITI_DATA_DIR`` set, and a user online (the hub, tried by the caller last).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_ENV = "ITI_DATA_DIR"
CACHE_ENV = "ITI_CACHE"

#: The project checkout (parent of the ``iti`` package). Only meaningful for a source checkout.
CHECKOUT_DIR = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Root of the model cache (``ITI_CACHE``, default ``~/.cache/iti``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "iti").expanduser()


def features_dir() -> Path:
    """Default output directory of activation features: ``features/`` at the top of the checkout."""
    return CHECKOUT_DIR / "features"


@dataclass
class DataSearch:
    """The candidate data roots, in order, with why each was considered; used for the error message too."""

    candidates: list[tuple[str, Path]] = field(default_factory=list)

    def find(self, relative: str | Path) -> Path | None:
        """The first candidate root that holds ``relative``, or None (the caller then tries the hub or raises)."""
        for _, root in self.candidates:
            p = root / relative
            if p.exists():
                return p
        return None

    def describe(self, relative: str | Path) -> str:
        """One numbered line per candidate with the path tried, for the message after :meth:`find` found nothing."""
        lines = [f"  {i}. {why}: {root / relative} (missing)" for i, (why, root) in enumerate(self.candidates, 1)]
        return "\n".join(lines) if lines else "  (no local candidates)"


def data_search(data_dir: str | os.PathLike | None = None) -> DataSearch:
    """The local roots to search: the argument, ``ITI_DATA_DIR``, then ``../shared/data`` beside the checkout."""
    search = DataSearch()
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():  # a mistyped path must not silently fall through to another copy of the data
            from .errors import DataNotFoundError

            raise DataNotFoundError(f"data directory {root} does not exist (given as data_dir / --data_dir); "
                                    f"leave it out to search ${DATA_ENV} and ../shared/data")
        search.candidates.append(("data_dir argument", root))
    if os.environ.get(DATA_ENV):
        search.candidates.append((f"${DATA_ENV}", Path(os.environ[DATA_ENV]).expanduser()))
    search.candidates.append(("shared data beside the checkout", CHECKOUT_DIR.parent / "shared" / "data"))
    cwd_shared = Path.cwd().resolve().parent / "shared" / "data"
    if cwd_shared != search.candidates[-1][1]:
        search.candidates.append(("shared data beside the working directory", cwd_shared))
    return search
