"""Exceptions with messages a user can act on.

Each class also derives from the builtin a caller would naturally catch (ValueError, FileNotFoundError, ...),
so generic handlers keep working.
"""
from __future__ import annotations


class ItiError(Exception):
    """Base class of every error this library raises on purpose."""


class UnknownModelError(ItiError, ValueError):
    """A model name that is neither a known short name, a hub id, nor a local directory."""


class ModelLoadError(ItiError, OSError):
    """A model that exists in principle but could not be loaded (offline hub, missing package, ...)."""


class UnsupportedArchitectureError(ItiError, ValueError):
    """A model whose head layout this library does not know."""


class DataNotFoundError(ItiError, FileNotFoundError):
    """A data set that was found in none of the places searched."""


class EmptyInputError(ItiError, ValueError):
    """An empty prompt list, data set or selection."""


class FeatureFileError(ItiError, ValueError):
    """A features file, manifest or shard that is missing, truncated, corrupt or inconsistent."""


class OutputExistsError(ItiError, FileExistsError):
    """An existing output that does not match the requested job; pass force to replace it."""


class HeadIndexError(ItiError, IndexError):
    """A layer or head index outside the model's geometry."""


class OutOfMemoryError(ItiError, MemoryError):
    """Out of memory even with one row per batch: no smaller batch is left to try."""


class InvalidOptionError(ItiError, ValueError):
    """An option or config value outside what it can mean, refused before any model loads or file is written;
    the message is one line, ``--option_name: <what is allowed>, got <value>``."""


class PaddingError(ItiError, ValueError):
    """A batch padded on the side that the requested positions cannot handle (right padding when steering the last
    token)."""


class DataFileError(FeatureFileError):
    """A data set file that is malformed, or holds another number of items than the data set must have."""


class NonFiniteInputError(ItiError, ValueError):
    """Features holding NaN or infinite values, which would give NaN probes or directions."""


class AlreadyBakedError(ItiError, ValueError):
    """A model that already carries a baked-in intervention, baked again without asking to add to it."""


class OutputLockedError(ItiError, BlockingIOError):
    """An output directory that another process is writing right now."""


class JudgeError(ItiError, RuntimeError):
    """A True/Info judge that could not be reached or gave an answer that cannot be read."""


class DiskFullError(ItiError, OSError):
    """No space left where an output is written: the message says where, how much is free and, when known,
    how much the write needs."""
