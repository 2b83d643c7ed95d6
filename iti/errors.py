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


class DroppedWeightsError(ModelLoadError):
    """A checkpoint holds tensors (a baked-in bias) that the class transformers loads has no place for."""


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




class DiskFullError(ItiError, OSError):
    """No space left where an output is written: the message says where, how much is free and, when known,
    how much the write needs."""


class GeometryMismatchError(ItiError, ValueError):
    """An intervention made for a model of another shape."""




class InterventionModelError(ItiError, ValueError):
    """An intervention made for a different model than the one being run."""




class EndpointError(ItiError, RuntimeError):
    """A request the endpoint refused, or that kept failing after every retry."""

    #: HTTP statuses that are the request's own fault (an over-long prompt): the only failures worth caching.
    prompt_statuses = frozenset({400, 413, 422})

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable

    @property
    def prompt_specific(self) -> bool:
        """True when the failure is the request's own (an over-long prompt), false when every request would fail."""
        return self.status in self.prompt_statuses


class PromptTooLongError(ItiError, ValueError):
    """A prompt longer than the model's context (refused before the forward pass)."""


class ModulePathError(ItiError, KeyError):
    """A module path (``model.layers.3.self_attn.o_proj``) that the model does not have."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class InteropError(ItiError, ValueError):
    """A file of another tool's format (pyvene, lm-evaluation-harness, GGUF, honest_llama) that cannot be read or
    written as asked."""


class InexpressibleExportError(InteropError):
    """An export the target format has no way to express (a model class pyvene cannot load, an architecture or
    rope that llama.cpp's llama layout lacks), refused before anything is written."""


class PyveneInterventionError(InteropError):
    """A saved pyvene intervention that is not a constant addition on a head-output module (a trainable or
    rotation intervention, one whose source comes at run time, an unknown component)."""


class SteeringFileError(InteropError):
    """An lm-evaluation-harness steering file whose hookpoints, actions or vectors do not fit this model."""


class GgufModelMismatchError(InteropError):
    """A GGUF file of another model than the one it is read against (architecture, sizes or weights differ)."""


class UnrepresentableShiftError(InteropError):
    """An output-space shift that no shift of the head outputs reproduces (it lies outside the range of W_o)."""


class HonestLlamaFeatureError(FeatureFileError):
    """honest_llama feature arrays that disagree with each other, with the model geometry or with the prompt set."""


class FeatureWeightsError(FeatureFileError):
    """Features collected from other weights than the model they would steer (another checkpoint of the same name)."""


class OffloadedWeightsError(ItiError, ValueError):
    """A model whose weights accelerate offloaded (meta tensors between forward passes), asked to change them (bake)."""
