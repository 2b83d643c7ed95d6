"""Every answer parser survives arbitrary text: a model can answer anything, and a parse failure must be a None
(counted as a mismatch), never an exception that stops a run."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iti.faithfulness.parsing import (
    extract_choice,
    extract_entailment,
    extract_list_content,
    extract_paragraph,
    extract_sentiment,
    redact_words,
)

# Arbitrary unicode, plus text built from the pieces the parsers look for, so the rules themselves get exercised.
PIECES = st.sampled_from(["Paragraph:", "Here is the text:", "Sure, here's", "<p>", "</li>", "<li>", "1.", "- ", "* ", '"',
                          "positive", "negative", "neutral", "unknown", "yes", "no", "a)", "(b)", "c.", "\n", "\n\n", ":",
                          "I am sorry,", "as an AI language model", "[REDACTED]", "word", " and ", ", ", "İ", "K"])
TEXT = st.one_of(st.text(max_size=300), st.lists(PIECES, max_size=40).map("".join))
CHOICES = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_class_parsers_return_a_class_or_none(text):
    assert extract_sentiment(text) in ("positive", "negative", "neutral", "unknown", None)
    assert extract_entailment(text) in ("yes", "no", "unknown", None)


@settings(max_examples=300, deadline=None)
@given(CHOICES, TEXT)
def test_choice_parser_returns_a_choice_unknown_or_none(choices, text):
    assert extract_choice(choices, text) in (*choices, "unknown", None)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_explanation_parsers_return_text_words_or_none(text):
    p = extract_paragraph(text)
    assert p is None or (isinstance(p, str) and p)
    words = extract_list_content(text)
    assert words is None or (words and all(isinstance(w, str) and w for w in words))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.lists(st.text(min_size=1, max_size=10), max_size=6), st.sampled_from(["[REDACTED]", "[REMOVED]", "\\1"]))
def test_redaction_never_raises_and_keeps_unlisted_text(paragraph, words, mask):
    out = redact_words(paragraph, words, mask)
    assert isinstance(out, str)
    if not words:
        assert out == paragraph
