"""Interventions and features to and from other tools' formats: pyvene, lm-evaluation-harness, GGUF (llama.cpp),
honest_llama's feature arrays. Every export is the shift at every position (``positions="all"``); every import of
an intervention is an ordinary :class:`iti.Intervention`, solved back to head shifts (:mod:`iti.interop.shifts`)."""
from __future__ import annotations

from .gguf_format import export_gguf, import_gguf, load_gguf_model
from .honest_llama_features import export_honest_llama_features, import_honest_llama_features, read_honest_llama_features
from .lm_eval_format import export_lm_eval, import_lm_eval
from .pyvene_format import export_pyvene, import_pyvene
from .shifts import intervention_from_output_shifts, output_shifts

__all__ = [
    "export_gguf",
    "export_honest_llama_features",
    "export_lm_eval",
    "export_pyvene",
    "import_gguf",
    "import_honest_llama_features",
    "import_lm_eval",
    "import_pyvene",
    "intervention_from_output_shifts",
    "load_gguf_model",
    "output_shifts",
    "read_honest_llama_features",
]
