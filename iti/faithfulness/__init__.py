"""Self-explanation faithfulness (Madsen et al. 2024, "Are self-explanations from LLMs faithful?"), run on the
plain model and on the same model with an intervention, and compared."""
from __future__ import annotations

from .cache import CachedGeneration, GenerationCache, GenerationKey
from .datasets import FaithfulnessDataset, Sample, dataset_names, load_faithfulness_dataset
from .experiment import FaithfulnessConfig, run_faithfulness
from .generate import CachedGenerator, GenerationSettings, LocalGenerator, RemoteGenerator, render_chat
from .models import INTROSPECT_NAMES, chat_format_of  # registers introspect's model names
from .prompts import CONFIG_FLAGS, TASKS, TaskConfigError
from .tasks import SampleResult, TaskSummary, run_task, summarize

__all__ = [
    "CONFIG_FLAGS", "TASKS", "CachedGeneration", "CachedGenerator", "FaithfulnessConfig", "FaithfulnessDataset",
    "GenerationCache", "GenerationKey", "INTROSPECT_NAMES", "GenerationSettings", "LocalGenerator", "RemoteGenerator", "Sample",
    "SampleResult", "TaskConfigError", "TaskSummary", "chat_format_of", "dataset_names", "load_faithfulness_dataset", "render_chat",
    "run_faithfulness", "run_task", "summarize",
]
