"""iti: read and steer the insides (attention heads, residual stream, attention and MLP outputs) of Hugging Face
language models in-process.

The public API is what a user needs end to end: load a model, trace or collect what it computes, probe it, fit a
steering value (ITI's :class:`Intervention` or any :class:`Steering`), apply it, bake it into the weights. Everything
else lives in its module (``iti.features.FeatureSet``, ``iti.hooks.module_hooks``, ``iti.interop``, ...); the
plumbing names older code imported from the top still resolve, loaded on first use, but are not advertised."""
from __future__ import annotations

from ._version import __version__
from .architectures import model_layout, register_architecture, supported_architectures
from .bake import bake, save_baked
from .collect import collect_head_activations
from .directions import fit_head_probes
from .features import load_features, write_features
from .fitting import fit_intervention, fit_steering, steering_from_contrast_pairs
from .hooks import HeadTrace
from .intervention import Intervention
from .models import load_model
from .probes import HeadProbes
from .steering import Steering

# Loaded on first use: the experiments' entry points (importing the library never imports a wing;
# tests/core/test_layering.py checks it), and plumbing that older code imported from the top.
_LAZY = {
    "build_prompt_set": "iti.truthfulqa.prompt_sets",
    "load_truthfulqa": "iti.truthfulqa.data",
    "FeatureSet": "iti.features",
    "PromptSet": "iti.features",
    "merge_shards": "iti.features",
    "HeadActivations": "iti.collect",
    "HeadGeometry": "iti.architectures",
    "ModelLayout": "iti.architectures",
    "ProbeFit": "iti.directions",
    "module_hooks": "iti.hooks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'iti' has no attribute {name!r}")


__all__ = [
    "HeadProbes",
    "HeadTrace",
    "Intervention",
    "Steering",
    "bake",
    "build_prompt_set",
    "collect_head_activations",
    "fit_head_probes",
    "fit_intervention",
    "fit_steering",
    "load_features",
    "load_model",
    "load_truthfulqa",
    "model_layout",
    "register_architecture",
    "save_baked",
    "steering_from_contrast_pairs",
    "supported_architectures",
    "write_features",
    "__version__",
]
