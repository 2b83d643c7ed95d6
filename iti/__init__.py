"""iti: read and steer the insides (attention heads, residual stream, attention and MLP outputs) of Hugging Face
language models in-process."""
from __future__ import annotations

from ._version import __version__
from .architectures import HeadGeometry, ModelLayout, model_layout, register_architecture, supported_architectures
from .collect import HeadActivations, collect_head_activations
from .directions import ProbeFit, fit_head_probes
from .features import FeatureSet, PromptSet, load_features, merge_shards, write_features
from .fitting import fit_intervention, fit_steering, steering_from_contrast_pairs
from .hooks import HeadTrace, module_hooks
from .intervention import Intervention
from .models import load_model
from .probes import HeadProbes
from .steering import Steering

# The experiments' entry points, importable from the top as before but loaded on first use: importing the
# library never imports a wing (tests/core/test_layering.py checks it).
_FROM_WINGS = {"build_prompt_set": "iti.truthfulqa.prompt_sets", "load_truthfulqa": "iti.truthfulqa.data"}


def __getattr__(name: str):
    if name in _FROM_WINGS:
        import importlib

        return getattr(importlib.import_module(_FROM_WINGS[name]), name)
    raise AttributeError(f"module 'iti' has no attribute {name!r}")


__all__ = [
    "FeatureSet",
    "HeadActivations",
    "HeadGeometry",
    "HeadProbes",
    "HeadTrace",
    "Intervention",
    "ModelLayout",
    "ProbeFit",
    "PromptSet",
    "Steering",
    "build_prompt_set",
    "collect_head_activations",
    "fit_head_probes",
    "fit_intervention",
    "fit_steering",
    "load_features",
    "load_model",
    "load_truthfulqa",
    "merge_shards",
    "model_layout",
    "module_hooks",
    "register_architecture",
    "steering_from_contrast_pairs",
    "supported_architectures",
    "write_features",
    "__version__",
]
