"""Where data sets, the model cache and the outputs of each command live.

Data sets are looked up in a fixed order so that the same command works for a developer with a checkout
beside ``shared/``, a user with ``ITI_DATA_DIR`` set, and a user online (the hub, tried by the caller last).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_ENV = "ITI_DATA_DIR"
CACHE_ENV = "ITI_CACHE"
OUTPUT_ENV = "ITI_OUTPUT_DIR"

#: Default directory of collected features (and where they are looked up), relative to :func:`output_root`; each
#: experiment names its own result directory (``results_dir(...)``).
FEATURES_DIR = "features"

#: The project checkout (parent of the ``iti`` package). Only meaningful for a source checkout.
CHECKOUT_DIR = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Root of the model cache (``ITI_CACHE``, default ``~/.cache/iti``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "iti").expanduser()


def in_checkout() -> bool:
    """Whether the package runs from a source checkout (a ``pyproject.toml`` beside ``iti/``; an editable install
    counts), rather than from an installed copy in site-packages."""
    return (CHECKOUT_DIR / "pyproject.toml").is_file()


def output_root() -> Path:
    """The directory every default output path is relative to, decided at call time:

    1. ``$ITI_OUTPUT_DIR`` when set (an explicit choice wins, in a checkout too);
    2. the checkout when running from one (:func:`in_checkout`), so that the paths in the README, such as
       ``validation/results/smollm2-135m_k48_a15_mass_mean/intervention_fold0``, are where the outputs are;
    3. otherwise (a non-editable install, where the package's parent is site-packages) the current working
       directory.

    An explicit ``--output_dir`` (or ``output_dir=``) of a command is used as given and bypasses this."""
    env = os.environ.get(OUTPUT_ENV)
    if env:
        return Path(env).expanduser()
    return CHECKOUT_DIR if in_checkout() else Path.cwd()


def results_dir(relative: str) -> Path:
    """A default output directory, given relative to :func:`output_root` (``"validation/results"`` ->
    ``<root>/validation/results``); each experiment declares its own."""
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ValueError(f"a default output directory is relative to the output root, got {relative!r}")
    return output_root() / relative


def features_dir() -> Path:
    """Default output directory of activation features (and where they are looked up): ``features/`` at the top
    of the checkout (see :func:`output_root`)."""
    return results_dir(FEATURES_DIR)


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
