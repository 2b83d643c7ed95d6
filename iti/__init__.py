"""iti: read and steer the attention heads of Hugging Face language models in-process."""
from __future__ import annotations

__version__ = "0.1.0"

from .architectures import HeadGeometry, ModelLayout, model_layout, register_architecture, supported_architectures
from .collect import HeadActivations, collect_head_activations
from .features import FeatureSet, load_features, merge_shards, write_features
from .hooks import HeadTrace, module_hooks
from .intervention import Intervention
from .probes import HeadProbes
from .models import load_model
from .prompt_sets import PromptSet, build_prompt_set
from .truthfulqa import load_truthfulqa

__all__ = [
    "FeatureSet",
    "HeadActivations",
    "HeadGeometry",
    "HeadProbes",
    "HeadTrace",
    "Intervention",
    "ModelLayout",
    "PromptSet",
    "build_prompt_set",
    "collect_head_activations",
    "load_features",
    "load_model",
    "load_truthfulqa",
    "merge_shards",
    "model_layout",
    "module_hooks",
    "register_architecture",
    "supported_architectures",
    "write_features",
    "__version__",
]
