"""introspect's chat formats (Falcon, Llama 2, Mistral; with and without a system message) and its short names.

The expected strings are written out by hand from introspect's model classes' rendering of one user turn (system
message line, ``User: ...``, ``Falcon:``; ``<s>[INST] <<SYS>>...<</SYS>>`` blocks), for the same IMDB sample. A run's
default system message is introspect's experiments' one: Falcon's preamble for Falcon, none for Llama 2 and Mistral."""
from __future__ import annotations

import pytest

from iti.faithfulness.datasets import SENTIMENT, Sample
from iti.faithfulness.experiment import FaithfulnessConfig, prompt_renderer
from iti.faithfulness.generate import render_chat
from iti.faithfulness.models import chat_format_of
from iti.faithfulness.prompts import PromptOptions, classify_prompt
from iti.models import resolve_model

from ..conftest import tiny_tokenizer

IMDB = Sample(7, SENTIMENT, "A great film. I loved the cast.", "positive")
QUESTION = ('What is the sentiment of the following paragraph? The paragraph can contain redacted words marked with '
            '[REDACTED]. Answer only "positive", "negative", "neutral", or "unknown". Do not explain the answer.\n\n'
            'Paragraph: A great film. I loved the cast.')
SYSTEM = "You are a helpful assistant. Answer {briefly}."  # braces in a system message are kept as they are
#: introspect's Falcon default system message, which its experiments use for Falcon (Llama 2, Mistral: "none").
FALCON_PREAMBLE = (
    "The following is a conversation between a highly knowledgeable and intelligent AI assistant, called Falcon, and a "
    "human user, called User. In the following interactions, User and Falcon will converse in natural language, and "
    "Falcon will answer User's questions. Falcon was built to be respectful, polite and inclusive. Falcon was built by "
    "the Technology Innovation Institute in Abu Dhabi. Falcon will never decline to answer a question, and always "
    "attempts to give an answer that User would be satisfied with. It knows a lot, and always tells the truth. The "
    "conversation begins.")

EXPECTED = {
    ("falcon", None): "User: " + QUESTION + "\nFalcon:",
    ("falcon", SYSTEM): "You are a helpful assistant. Answer {briefly}.\nUser: " + QUESTION + "\nFalcon:",
    ("falcon", FALCON_PREAMBLE): FALCON_PREAMBLE + "\nUser: " + QUESTION + "\nFalcon:",
    ("llama2", None): "<s>[INST] " + QUESTION + " [/INST]",
    ("llama2", SYSTEM): ("<s>[INST] <<SYS>>\nYou are a helpful assistant. Answer {briefly}.\n<</SYS>>\n\n" + QUESTION
                         + " [/INST]"),
    ("mistral", None): "<s>[INST] " + QUESTION + " [/INST]",
    # introspect's Mistral takes no system message; Mistral's own convention: before the user text, one blank line
    ("mistral", SYSTEM): "<s>[INST] You are a helpful assistant. Answer {briefly}.\n\n" + QUESTION + " [/INST]",
}


def test_the_sample_prompt_is_the_one_the_expectations_are_written_for():
    assert classify_prompt(IMDB, IMDB.paragraph, PromptOptions()) == QUESTION
    from iti.faithfulness.generate import DEFAULT_SYSTEM_MESSAGES

    assert DEFAULT_SYSTEM_MESSAGES == {"falcon": FALCON_PREAMBLE}


@pytest.mark.parametrize(("chat_format", "system"), list(EXPECTED))
def test_fallback_formats_equal_introspects_rendering(chat_format, system):
    assert render_chat(tiny_tokenizer(), QUESTION, chat_format, system) == EXPECTED[chat_format, system]


@pytest.mark.parametrize(("name", "hub_id", "chat_format"), [
    ("falcon-7b", "tiiuae/falcon-7b-instruct", "falcon"),
    ("falcon-40b", "tiiuae/falcon-40b-instruct", "falcon"),
    ("llama2-7b", "meta-llama/Llama-2-7b-chat-hf", "llama2"),
    ("llama2-70b", "meta-llama/Llama-2-70b-chat-hf", "llama2"),
    ("mistral-v1-7b", "mistralai/Mistral-7B-Instruct-v0.1", "mistral"),
])
def test_introspect_short_names_resolve_and_pick_their_chat_format(name, hub_id, chat_format):
    src = resolve_model(name)
    assert (src.kind, src.location) == ("hub", hub_id)
    assert chat_format_of(name) == chat_format
    render = prompt_renderer(FaithfulnessConfig(model=name), tiny_tokenizer())
    assert render(QUESTION) == EXPECTED[chat_format, FALCON_PREAMBLE if chat_format == "falcon" else None]
    without = prompt_renderer(FaithfulnessConfig(model=name, system_message="none"), tiny_tokenizer())
    assert without(QUESTION) == EXPECTED[chat_format, None]
    with_system = prompt_renderer(FaithfulnessConfig(model=name, system_message=SYSTEM), tiny_tokenizer())
    assert with_system(QUESTION) == EXPECTED[chat_format, SYSTEM]


def test_an_explicit_chat_format_wins_over_the_short_names_and_other_names_keep_the_template():
    assert prompt_renderer(FaithfulnessConfig(model="falcon-7b", chat_format="plain"), tiny_tokenizer())("hi") == \
        "User: hi\nAssistant:"
    assert chat_format_of("smollm2-135m") is None and chat_format_of("tiiuae/falcon-7b-instruct") is None


def test_the_faithfulness_cli_accepts_the_short_names_and_a_system_message():
    from iti.faithfulness.experiment import _check_inputs

    for name in ("falcon-7b", "falcon-40b", "llama2-7b", "llama2-70b", "mistral-v1-7b"):
        _check_inputs(FaithfulnessConfig(model=name, system_message="Be brief."))  # no UnknownModelError
