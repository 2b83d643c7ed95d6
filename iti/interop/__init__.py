"""Steering values and features to and from other tools' formats: pyvene, lm-evaluation-harness, GGUF (llama.cpp),
llama.cpp's control vectors, honest_llama's feature arrays. Every export writes the shift at every position
(``positions="all"``) and takes an :class:`iti.Intervention` or any :class:`iti.Steering`; every ``load_*_steering``
reads a file as the steering it holds (no solving), and every ``import_*`` asks for ITI's head form, solved back to
head shifts where the file's vectors allow (:mod:`iti.interop.shifts`)."""
from __future__ import annotations

from .control_vector import export_control_vector, load_control_vector
from .gguf_format import export_gguf, import_gguf, load_gguf_model, load_gguf_steering
from .honest_llama_features import export_honest_llama_features, import_honest_llama_features, read_honest_llama_features
from .lm_eval_format import export_lm_eval, import_lm_eval, load_lm_eval_steering
from .pyvene_format import export_pyvene, import_pyvene, load_pyvene_steering
from .shifts import intervention_from_output_shifts, intervention_from_steering, module_output_vectors, output_shifts

__all__ = [
    "export_control_vector",
    "export_gguf",
    "export_honest_llama_features",
    "export_lm_eval",
    "export_pyvene",
    "import_gguf",
    "import_honest_llama_features",
    "import_lm_eval",
    "import_pyvene",
    "intervention_from_output_shifts",
    "intervention_from_steering",
    "load_control_vector",
    "load_gguf_model",
    "load_gguf_steering",
    "load_lm_eval_steering",
    "load_pyvene_steering",
    "module_output_vectors",
    "output_shifts",
    "read_honest_llama_features",
]
