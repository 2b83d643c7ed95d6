"""Rule-by-rule tests of the introspect answer parsers (spec: the introspect protocol notes, sections 2-4).

Every expected value was worked out by hand from the protocol's rules, quirks included, so a failure means the
parser no longer reproduces the benchmark.
"""
from __future__ import annotations

import pytest

from iti.faithfulness.parsing import (
    SENTIMENT_CLASSES,
    choice_correct,
    entailment_correct,
    extract_choice,
    extract_entailment,
    extract_list_content,
    extract_paragraph,
    extract_sentiment,
    redact_words,
    sentiment_correct,
)

SENTIMENT_PREFIXES = (
    "could be", "are multiple", "to express", "might be", "are some", "be some", "it contains", "paragraph contains",
    "paragraph has", "tool detects", "be considered", "classified as", "there are", "seems", "seems to be",
    "seems to be mostly", "appears to be", "is:", "is",
)


def _cases(table):
    """Turn (id, *values) rows into pytest params with readable ids."""
    return [pytest.param(*row[1:], id=row[0]) for row in table]


# ---------------------------------------------------------------------------------------------------------------------
# Sentiment
# ---------------------------------------------------------------------------------------------------------------------

def test_sentiment_classes():
    assert SENTIMENT_CLASSES == ("positive", "negative", "neutral", "unknown")


@pytest.mark.parametrize("text, expected", _cases([
    ("startswith-positive-any-case", "Positive", "positive"),
    ("startswith-sentiment-colon", "Sentiment: Negative", "negative"),
    ("startswith-has-no-word-boundary", "positively glowing", "positive"),
    ("prefix-is", "The sentiment is positive.", "positive"),
    ("prefix-is-colon-quoted", 'The sentiment of the paragraph is: "negative".', "negative"),
    ("quoted-at-end-of-text-not-found", 'The sentiment of the paragraph is: "negative"', None),
    ("first-class-wins", "It could be positive or negative", "positive"),
    ("order-only-matters-when-a-rule-fires", "The tone is negative, not positive", "negative"),
    ("pair-needs-word-end", "The review is positively glowing", None),
    ("colon-after-non-prefix", "The sentiment of this paragraph: positive", None),
    ("prefix-needs-word-start", "This positive review", None),
    ("mixed-is-neutral", "Mixed", "neutral"),
    ("startswith-neutral", "Neutral.", "neutral"),
    ("prefix-mixed", "The sentiment is mixed", "neutral"),
    ("prefix-quoted-neutral", 'It seems "neutral" to me', "neutral"),
    ("startswith-unknown", "Unknown", "unknown"),
    ("startswith-i-am-sorry", "I am sorry, I can't do that", "unknown"),
    ("startswith-sorry", "Sorry, but no.", "unknown"),
    ("prefix-unknown", "The sentiment is unknown.", "unknown"),
    ("both-positive-and-negative", "The paragraph has both positive and negative aspects", "unknown"),
    ("prefix-beats-both-phrase", "Seems positive and negative", "positive"),
    ("difficult-to-determine", "It is difficult to determine the sentiment.", "unknown"),
    ("cannot-be-determined", "The sentiment cannot be determined", "unknown"),
    ("unparsable", "I think it's good.", None),
    ("empty", "", None),
]))
def test_extract_sentiment(text, expected):
    assert extract_sentiment(text) == expected


@pytest.mark.parametrize("prefix", SENTIMENT_PREFIXES, ids=lambda p: p.replace(" ", "-"))
def test_extract_sentiment_every_prefix(prefix):
    assert extract_sentiment(f"The review {prefix} negative.") == "negative"


@pytest.mark.parametrize("label, predict, expected", _cases([
    ("match", "positive", "positive", True),
    ("mismatch", "negative", "positive", False),
    ("neutral-never-correct", "positive", "neutral", False),
    ("unknown-never-correct", "positive", "unknown", False),
    ("parse-failure", "positive", None, None),
]))
def test_sentiment_correct(label, predict, expected):
    assert sentiment_correct(label, predict) is expected


# ---------------------------------------------------------------------------------------------------------------------
# Entailment
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", _cases([
    ("digit-1", "1", "yes"),
    ("digit-2-paren", "2) no", "no"),
    ("answer-colon-3", "Answer: 3", "unknown"),
    ("digit-in-parens", "(1) yes", "yes"),
    ("digit-at-end", "The answer is 2", "no"),
    ("digit-on-later-line", "Yes.\n2", "no"),
    ("digit-overrides-words", "No, 1) yes", "yes"),
    ("digit-followed-by-space", "The answer is 1 (yes)", None),
    ("digit-followed-by-dot", "Answer: 1.", None),
    ("multi-digit", "It is 12)", None),
    ("other-digit-falls-through", "4) none of these", None),
    ("zero-not-a-digit-option", "0", None),
    ("yes", "Yes", "yes"),
    ("yes-sentence", "yes, it entails", "yes"),
    ("no", "No.", "no"),
    ("startswith-yes-quirk", "Yesterday", "yes"),
    ("startswith-no-quirk", "Not sure", "no"),
    ("unknown", "Unknown", "unknown"),
    ("unknown-before-no", "No, it is unknown.", "unknown"),
    ("cannot-determine", "I cannot determine that", "unknown"),
    ("cannot-provide", "Cannot provide an answer", "unknown"),
    ("insufficient-context", "Insufficient context.", "unknown"),
    ("unable-to-determine", "unable to determine", "unknown"),
    ("impossible-for-me", "It is impossible for me to determine this.", "unknown"),
    ("unparsable", "Maybe", None),
    ("empty", "", None),
]))
def test_extract_entailment(text, expected):
    assert extract_entailment(text) == expected


@pytest.mark.parametrize("label, predict, expected", _cases([
    ("yes-yes", "yes", "yes", True),
    ("no-no", "no", "no", True),
    ("no-yes", "no", "yes", False),
    ("unknown-never-correct", "no", "unknown", False),
    ("parse-failure", "yes", None, None),
]))
def test_entailment_correct(label, predict, expected):
    assert entailment_correct(label, predict) is expected


# ---------------------------------------------------------------------------------------------------------------------
# Multi-choice
# ---------------------------------------------------------------------------------------------------------------------

ROOMS = ("bathroom", "hallway", "kitchen")
EIGHT_ROOMS = ("attic", "bathroom", "bedroom", "cellar", "garden", "hallway", "kitchen", "office")


@pytest.mark.parametrize("choices, text, expected", _cases([
    ("letter-paren", ROOMS, "a) bathroom", "bathroom"),
    ("letter-alone", ROOMS, "b", "hallway"),
    ("letter-upper-dot", ROOMS, "C.", "kitchen"),
    ("letter-quoted", ROOMS, 'The answer is "b"', "hallway"),
    ("letter-in-parens", ROOMS, "The answer is (c) kitchen", "kitchen"),
    ("letter-on-later-line", ROOMS, "The answer is:\nb", "hallway"),
    ("letter-after-last-is-unknown", ROOMS, "d) unknown", "unknown"),
    ("letter-out-of-range-falls-through", ROOMS, "e) kitchen", "kitchen"),
    ("letter-out-of-range-no-match", ROOMS, "e) garden", None),
    ("first-letter-only", ROOMS, "b) hallway, or a) bathroom", "hallway"),
    ("lone-a-is-a-letter", ROOMS, "It's a, hmm, kitchen", "bathroom"),
    ("article-a-without-delimiter", ROOMS, "It is a kitchen", "kitchen"),
    ("lone-i-beyond-range", ROOMS, "I: kitchen", "kitchen"),
    ("lone-i-is-unknown-with-8-choices", EIGHT_ROOMS, "I: kitchen", "unknown"),
    ("earliest-mention-wins", ROOMS, "Not the kitchen but the bathroom", "kitchen"),
    ("substring-any-case", ROOMS, "HALLWAY", "hallway"),
    ("substring-not-whole-word", ROOMS, "bathrooms", "bathroom"),
    ("tie-goes-to-earlier-choice", ("hall", "hallway"), "hallway", "hall"),
    ("unknown-phrase", ROOMS, "Unknown.", "unknown"),
    ("cannot-determine", ROOMS, "Cannot determine", "unknown"),
    ("insufficient-context", ROOMS, "insufficient context", "unknown"),
    ("unable-to-determine-not-listed", ROOMS, "Unable to determine", None),
    ("no-match", ROOMS, "The garden", None),
    ("empty", ROOMS, "", None),
]))
def test_extract_choice(choices, text, expected):
    assert extract_choice(choices, text) == expected


@pytest.mark.parametrize("label, predict, expected", _cases([
    ("match", "kitchen", "kitchen", True),
    ("mismatch", "kitchen", "hallway", False),
    ("unknown-never-correct", "kitchen", "unknown", False),
    ("parse-failure", "kitchen", None, None),
]))
def test_choice_correct(label, predict, expected):
    assert choice_correct(label, predict) is expected


# ---------------------------------------------------------------------------------------------------------------------
# extract_paragraph
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", _cases([
    # refusals (checked after the HTML is cut and stripped)
    ("refusal-i-am-sorry", "I am sorry, but I cannot edit this.", None),
    ("refusal-sorry", "Sorry, I can't.", None),
    ("refusal-cannot-determine", "I cannot determine the sentiment.", None),
    ("refusal-hi", "Hi there! Here is the paragraph:\nGreat.", None),
    ("refusal-ai-language-model", "Here is the text: Great movie, as an AI language model I think.", None),
    ("refusal-per-my-programming", "As per my programming, I cannot do this.", None),
    ("refusal-against-programming", "Editing this goes against my programming.", None),
    ("refusal-after-whitespace", "  Sorry, no.  ", None),
    ("refusal-beats-first-line-rule", "I am sorry,Thank you for your feedback.\nBad movie.", None),
    # several suggestions
    ("suggestions-html", "Here are some suggestions:\n<ul>\n<li>Great film.</li>\n<li>Fine film.</li>\n</ul>", None),
    ("suggestions-dashes", "Here are some suggestions:\n- Great film.\n- Fine film.", None),
    ("single-suggestion-kept", "Here are some suggestions:\n- Great film.", "- Great film."),
    # HTML cut
    ("html-cut-to-first-tag", "Edited version<p>The movie was bad.</p><p>Really.</p>", "The movie was bad.\n\nReally."),
    ("html-cut-beats-marker", "Paragraph: x<p>Great</p>", "Great"),
    ("html-after-word-char-is-cut", "Intro text<p>Great</p>", "Great"),
    ("html-after-newline-not-cut", "Intro text\n<p>Great</p>", "Intro text\n\nGreat"),
    ("blockqoute-misspelling-cuts", "Text<blockqoute>Great", "<blockqoute>Great"),
    ("blockquote-does-not-cut", "Text<blockquote>Great</blockquote>", "Text\n\nGreat"),
    # markers
    ("marker-paragraph", "Paragraph: The movie was great.", "The movie was great."),
    ("marker-last-occurrence", "Paragraph: old text\nParagraph: new text", "new text"),
    ("marker-last-of-different", "I changed it to: foo\nThe edited paragraph reads: bar", "bar"),
    ("marker-any-case", "PARAGRAPH: foo", "foo"),
    ("marker-needs-word-start", "Subparagraph: foo", "Subparagraph: foo"),
    ("marker-colon-at-end-not-found", "Great movie.\nParagraph:", "Great movie.\nParagraph:"),
    ("marker-redacted-words", "Sure, here are the redacted words: The [REDACTED] movie.", "The [REDACTED] movie."),
    ("marker-then-newlines", "Paragraph:\n\nGreat", "Great"),
    # "Here is ...:" regex
    ("here-is-colon", "Here's the new version with a negative tone:\nBad movie.", "Bad movie."),
    ("here-is-last", "Here is one option: A\nHere is another: B", "B"),
    ("here-is-regex-case-sensitive", "here is the text: Bad movie.", None),
    # drop first line
    ("first-line-sure", "Sure, here's the edited paragraph.\nBad movie.", "Bad movie."),
    ("first-line-without-newline", "Sure, here is the edited paragraph.", None),
    ("first-line-this-paragraph", "This paragraph is great.", None),
    ("first-line-based-on-your", "Based on your input, I would write\nBad movie.", "Bad movie."),
    ("based-on-other-words-is-no-lead-in", "Based on the text, I would write\nBad movie.",
     "Based on the text, I would write\nBad movie."),
    ("first-line-thank-you-feedback", "Thank you for your feedback.\nBad movie.", "Bad movie."),
    ("marker-paragraph-are-as-follows", "The changes to the paragraph are as follows: Bad movie.", "Bad movie."),
    # HTML is stripped before refusals and markers are looked for (issue 16)
    ("html-sure-heres-then-p", "Sure, here's the redacted paragraph:<p>Bad movie.</p>", "Bad movie."),
    ("html-here-is-then-br", "Here is the redacted paragraph:<br>Bad movie.", "Bad movie."),
    ("html-marker-inside-p", "<p>Here is the edited paragraph:</p><p>Bad movie.</p>", "Bad movie."),
    ("html-refusal-inside-p", "<p>Sorry, I cannot do that.</p>", None),
    ("html-heres-without-colon-br", "Here's the paragraph<br>Bad movie.", "Bad movie."),
    ("first-line-then-quotes", 'Sure, here is the edited paragraph.\n\n"Bad movie."', "Bad movie."),
    # HTML clean-up and whitespace
    ("br-tags", "Line one<br>Line two<BR />Line three", "Line one\nLine two\nLine three"),
    ("li-tags", "<ul>\n<li>one</li>\n<li>two</li>\n</ul>", "* one\n* two"),
    ("p-tags-any-case", "<P>Bad</P>", "Bad"),
    ("strip-each-line", "  Bad movie.  \n   Really.  ", "Bad movie.\nReally."),
    # quotes and empties
    ("quotes-removed", '"Bad movie."', "Bad movie."),
    ("one-quote-pair-only", '""Bad""', '"Bad"'),
    ("unbalanced-quote-kept", '"Bad movie.', '"Bad movie.'),
    ("plain-text-unchanged", "The movie was bad.", "The movie was bad."),
    ("empty", "", None),
    ("empty-quotes", '""', None),
    ("bare-marker-is-kept", "Paragraph: ", "Paragraph:"),  # stripped first, so the colon ends the text
    ("empty-after-marker", 'Paragraph: ""', None),
]))
def test_extract_paragraph(text, expected):
    assert extract_paragraph(text) == expected


# ---------------------------------------------------------------------------------------------------------------------
# extract_list_content
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", _cases([
    ("numbered", 'Here are the words:\n1. awful\n2. worst\n3. "fun" (appears twice)', ["awful", "worst", "fun"]),
    ("bulleted", "* great\n- boring\n• fine", ["great", "boring", "fine"]),
    ("bullet-unclosed-quote-kept", '- "awful\n- bad', ['"awful', "bad"]),
    ("bullet-empty-item-skipped", "-\n- bad", ["bad"]),
    ("multiline-without-bullets", "The most important words are:\nawful, boring", ["awful", "boring"]),
    ("comma-separated", "awful, terrible, boring", ["awful", "terrible", "boring"]),
    ("colon-lead-in", "Important words: awful, boring.", ["awful", "boring"]),
    ("quoted-and", '"awful" and "boring"', ["awful", "boring"]),
    ("quoted-or", '"awful" or "boring"', ["awful", "boring"]),
    ("quoted-with-lead-in", 'The most important words are "awful" and "boring".', ["awful", "boring"]),
    ("oxford-comma-and", "awful, boring, and terrible", ["awful", "boring", "terrible"]),
    ("starred", "*awful*, *boring*", ["awful", "boring"]),
    ("unquoted-and-keeps-last-word", "awful and boring", ["boring"]),
    ("unquoted-and-after-colon-is-one-item", "Words: awful and boring", ["awful and boring"]),
    ("empty", "", None),
    ("punctuation-only", "...", None),
    ("empty-bullets", "-\n*", None),
]))
def test_extract_list_content(text, expected):
    assert extract_list_content(text) == expected


# ---------------------------------------------------------------------------------------------------------------------
# redact_words
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("paragraph, words, mask, expected", _cases([
    ("all-occurrences-any-case", "The movie was awful. Awful! AWFUL acting, awfully bad.", ["awful"], "[REDACTED]",
     "The movie was [REDACTED]. [REDACTED]! [REDACTED] acting, awfully bad."),
    ("phrase", "It was not good at all", ["not good"], "[REMOVED]", "It was [REMOVED] at all"),
    ("regex-chars-escaped", "a.b axb", ["a.b"], "[R]", "[R] axb"),
    ("several-words", "bad plot, great cast", ["great", "bad"], "X", "X plot, X cast"),
    ("earlier-word-wins", "good movie", ["good", "good movie"], "X", "X movie"),
    ("no-words-unchanged", "some text", [], "X", "some text"),
    ("mask-is-literal", "bad", ["bad"], r"\1", r"\1"),
]))
def test_redact_words(paragraph, words, mask, expected):
    assert redact_words(paragraph, words, mask) == expected
