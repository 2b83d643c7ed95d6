"""The faithfulness paper's models: introspect's short names, registered with the library's model names when this
wing is imported, and the chat format each renders its prompts with."""
from __future__ import annotations

import os

from ..models import register_model_names

#: introspect's short names (the faithfulness paper's models) and the hub ids they stand for.
INTROSPECT_NAMES: dict[str, str] = {
    "falcon-7b": "tiiuae/falcon-7b-instruct",
    "falcon-40b": "tiiuae/falcon-40b-instruct",
    "llama2-7b": "meta-llama/Llama-2-7b-chat-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-chat-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-chat-hf",
    "mistral-v1-7b": "mistralai/Mistral-7B-Instruct-v0.1",
    "mistral-v2-7b": "mistralai/Mistral-7B-Instruct-v0.2",
}

#: The chat format (a ``FALLBACK_CHAT_FORMATS`` name of the faithfulness prompts) each short name renders its
#: prompts with, as introspect does for that model.
CHAT_FORMAT_OF_NAME: dict[str, str] = {
    "falcon-7b": "falcon", "falcon-40b": "falcon", "llama2-7b": "llama2", "llama2-13b": "llama2", "llama2-70b": "llama2",
    "mistral-v1-7b": "mistral", "mistral-v2-7b": "mistral", "llama2_chat_7B": "llama2", "llama2_chat_13B": "llama2", "llama2_chat_70B": "llama2",
}

register_model_names(INTROSPECT_NAMES)


def chat_format_of(name: str | os.PathLike) -> str | None:
    """The chat format a short name stands for (``falcon-7b`` -> ``falcon``), or None for other names."""
    return CHAT_FORMAT_OF_NAME.get(str(name))
