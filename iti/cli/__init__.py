"""The command line (``iti collect / validate / bake / export / import / faithfulness / concepts / demo``): the
application layer, beside the core and the experiment wings, which it is the one place to put together. The
scripts in ``get_activations/`` and ``validation/`` and the ``iti`` console script call :func:`main`."""
from .commands import build_parser, main

__all__ = ["build_parser", "main"]
