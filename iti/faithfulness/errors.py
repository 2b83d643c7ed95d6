"""The faithfulness experiment's errors (each also an :class:`~iti.errors.ItiError` and the builtin a caller would
catch)."""
from __future__ import annotations

from ..errors import DataNotFoundError, ItiError


class UnknownDatasetError(DataNotFoundError, ValueError):
    """A data set name this module does not know."""


class TaskConfigError(ItiError, ValueError):
    """An unknown task, config flag, or a flag that does not apply to the task."""


class RemoteModelError(ItiError, ValueError):
    """A served model name the endpoint does not serve."""


class CacheFileError(ItiError, ValueError):
    """A cache path that is not a SQLite file, is another program's database, or has another schema version."""


class ReplayError(ItiError, ValueError):
    """``--replay`` cannot re-report from the cache alone: no recorded run, other settings, or a missing answer."""
