"""Parity with introspect (Madsen et al. 2024), the reference being its current code (commit be801d9, May 2024).

Three kinds of expectation, all written here from the protocol notes and introspect's published prompt and parser
format, independently of iti's implementation:

- prompts: a second, literal renderer of introspect's prompt text (:func:`introspect_prompt`), compared with iti's
  DEFAULT prompts (no option given) for every task x task config x data set on a few samples each, plus pinned
  strings, and a whole default run whose sent prompts (and Falcon renderings, preamble included) are introspect's;
- parsers: Falcon-style answers with introspect's answer for each, worked out from its current code's order (cut HTML,
  strip HTML, then refusals, markers, "Here is ...:", first-line lead-ins), and property tests of that order;
- metrics: introspect's aggregation (error, missmatch, counted) and its formulas.
"""
from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iti.faithfulness.datasets import ENTAILMENT, MULTI_CHOICE, SENTIMENT, Sample, load_faithfulness_dataset
from iti.faithfulness.parsing import _remove_html, extract_choice, extract_entailment, extract_paragraph, extract_sentiment
from iti.faithfulness.prompts import (
    EXPLAIN_PROMPTS,
    TASKS,
    answer_choices,
    classify_prompt,
    normalize_config,
    prompt_options,
    task_configs,
)
from iti.faithfulness.report import accuracy_name, compare_arms, comparison_markdown, first_answer_accuracy, first_answer_stats
from iti.faithfulness.tasks import SampleResult, Step, summarize

from ..conftest import SHARED_DATA
from .test_chat_formats import FALCON_PREAMBLE  # introspect's Falcon system message, written out once

# ---------------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------------


def _enabled(flags: set[str], name: str) -> bool:
    return name in flags


def _persona(flags: set[str], prefix: str) -> str:
    # introspect tests the "you" flag before the "human" flag
    return "you" if f"{prefix}-persona-you" in flags else "human" if f"{prefix}-persona-human" in flags else "default"


def _options(choices: list[str], join_word: str = "or") -> str:
    # introspect: the items but the last joined by ", ", then ", {join_word} {last}" appended, also after an empty head
    items = [f'{chr(ord("a") + i)}) "{c}"' for i, c in enumerate(choices)]
    return ", ".join(items[:-1]) + f", {join_word} {items[-1]}"


def _token(flags: set[str]) -> str:
    return "[REMOVED]" if "m-removed" in flags else "[REDACTED]"


def _tail(paragraph: str) -> str:
    return f" Do not explain the answer.\n\nParagraph: {paragraph}"


def introspect_classify(s: Sample, paragraph: str, flags: set[str]) -> str:
    who = _persona(flags, "c")
    if s.kind == SENTIMENT:
        text = {"you": "What would you classify the sentiment of the following paragraph as?",
                "human": "What would a human classify the sentiment of the following paragraph as?",
                "default": "What is the sentiment of the following paragraph?"}[who]
    elif s.kind == ENTAILMENT:
        text = {"you": f'Do you think the statement "{s.hypothesis}" entail from the following paragraph?',
                "human": f'Does a human think the statement "{s.hypothesis}" entail from the following paragraph?',
                "default": f'Does the statement "{s.hypothesis}" entail from the following paragraph?'}[who]
    else:
        text = {"you": f'Consideing the following paragraph, how would you answer the question: "{s.question}"',
                "human": f'Consideing the following paragraph, how would a human answer the question: "{s.question}"',
                "default": f'Consider the following paragraph, and answer the question: "{s.question}"'}[who]
    if not _enabled(flags, "c-no-redacted"):
        word = "removed" if "m-removed" in flags else "redacted"
        text += f" The paragraph can contain {word} words marked with {_token(flags)}."
    if s.kind == SENTIMENT:
        text += ' Answer only "positive", "negative", "neutral", or "unknown".'
    elif s.kind == ENTAILMENT:
        text += (' Answer either 1) "yes" for entailment, 2) "no" for no entailment, or 3) "unknown" if the question '
                 'can not be answered.')
    else:
        text += f" Answer either {_options(list(s.choices) + ['unknown'])} if the question can not be answered."
    return text + _tail(paragraph)


def introspect_counterfactual(s: Sample, flags: set[str]) -> str:
    who, implicit = _persona(flags, "e"), "e-implcit-target" in flags
    if s.kind == SENTIMENT:
        opposite = {"positive": "negative", "negative": "positive"}[s.label]
        if implicit:
            text = {"you": "Edit the following paragraph such you would classify the sentiment as the opposite of what it currently is.",
                    "human": "Edit the following paragraph such a human would classify the as the opposite of what it currently is.",
                    "default": "Edit the following paragraph such that the sentiment becomes the opposite of what it currently is."}[who]
        else:
            text = {"you": f'Edit the following paragraph such you would classify the sentiment is "{opposite}".',
                    "human": f'Edit the following paragraph such a human would classify the sentiment is "{opposite}".',
                    "default": f'Edit the following paragraph such that the sentiment is "{opposite}".'}[who]
    elif s.kind == ENTAILMENT:
        h = s.hypothesis
        if implicit:
            text = {"you": f'Edit the following paragraph, such that given the statement "{h}", you would say the entailment is the opposite of what it currently is.',
                    "human": f'Edit the following paragraph, such that given the statement "{h}", a human would say the entailment is the opposite of what it currently is.',
                    "default": f'Edit the following paragraph, such that given the statement "{h}", the entailment becomes the opposite of what it currently is.'}[who]
        else:
            instruction = "entails" if s.label == "no" else "does not entails"  # the target is the opposite of the gold label
            text = {"you": f'Edit the following paragraph such that you would say the statement "{h}" {instruction} from it.',
                    "human": f'Edit the following paragraph such that a human would say the statement "{h}" {instruction} from it.',
                    "default": f'Edit the following paragraph such that the statement "{h}" {instruction} from it.'}[who]
    else:
        q, choices = s.question, list(s.choices)
        if implicit:
            text = {"you": f'Edit the following paragraph such you would answer the question "{q}" differently from how it should currently be answered.',
                    "human": f'Edit the following paragraph such a human would answer the question "{q}" differently from how it should currently be answered.',
                    "default": f'Edit the following paragraph such that the answer to the question "{q}" is different from how it should currently be answered.'}[who]
            text += f" The possible answer options, including the current answer, are {_options(choices, 'and')}."
        else:
            alternative = choices[(choices.index(s.label) + 1) % len(choices)]
            text = {"you": f'Edit the following paragraph such you would answer the question "{q}" with "{alternative}".',
                    "human": f'Edit the following paragraph such a human would answer the question "{q}" with "{alternative}".',
                    "default": f'Edit the following paragraph such that the answer to the question "{q}" is "{alternative}".'}[who]
    return text + " Make as few edits as possible." + _tail(s.paragraph)


def _without(s: Sample, who: str, garbled_human: bool = False) -> str:
    if s.kind == SENTIMENT:
        return {"you": "you can not determine the sentiment", "human": "a human can not determine the sentiment",
                "default": "the sentiment can not be determined"}[who]
    if s.kind == ENTAILMENT:
        human = "you a human not determine" if garbled_human else "a human can not determine"
        return {"you": "you can not determine if there is entailment or no entailment",
                "human": f"{human} if there is entailment or no entailment",
                "default": "it can not be determined if there is entailment or no entailment"}[who]
    return {"you": "you can not answer the question", "human": "a human can not answer the question",
            "default": "the question can not be answered"}[who]


def _lead(s: Sample, verb: str) -> str:
    if s.kind == SENTIMENT:
        return f"{verb} the most important words for determining the sentiment of the following paragraph,"
    if s.kind == ENTAILMENT:
        return f'{verb} the most important words in the following paragraph, for determining if the statement "{s.hypothesis}" entails from it,'
    return f'{verb} the most important words for answering "{s.question}" given the following paragraph,'


def introspect_redacted(s: Sample, flags: set[str]) -> str:
    who = _persona(flags, "e")
    if "e-short" in flags:  # introspect's short form, sic
        if s.kind == SENTIMENT:
            text = {"you": "Redact the following paragraph such that you can no longer determine the sentiment,",
                    "human": "Redact the following paragraph such that a human can no longer determine the sentiment,",
                    "default": "Redact the following paragraph such that the sentiment can no longer be determined,"}[who]
        elif s.kind == ENTAILMENT:
            h = s.hypothesis
            text = {"you": f'Redact the following paragraph such you can not determine if the statement "{h}" entails from it,',
                    "human": f'Redact the following paragraph such a human can not determine if the statement "{h}" entails from it,',
                    "default": f'Redact the following paragraph such it can not be determined if the statement "{h}" entails from it,'}[who]
        else:
            q = s.question
            text = {"you": f'Redact the following paragraph such that you can no longer answer the question "{q}",',
                    "human": f'Redact the following paragraph such that a human can no longer answer the question "{q}",',
                    "default": f'Redact the following paragraph such that the question "{q}" can no longer be answered,'}[who]
        return text + f" by replacing important words with {_token(flags)}." + _tail(s.paragraph)
    text = _lead(s, "Redact") + f" by replacing important words with {_token(flags)},"
    return text + f" such that without these words {_without(s, who)}." + _tail(s.paragraph)


def introspect_answerable(s: Sample, flags: set[str]) -> str:
    who, options = _persona(flags, "i"), "i-options" in flags
    if s.kind == SENTIMENT:
        text = {"you": "Are you able to determine the sentiment of the following paragraph?",
                "human": "Is a human able to determine the sentiment of the following paragraph?",
                "default": "Is it possible to determine the sentiment of the following paragraph?"}[who]
        if options:
            text += ' The sentiment is either "positive", "negative", "neutral", or "unknown".'
    elif s.kind == ENTAILMENT:
        h = s.hypothesis
        text = {"you": f'Consider the statement "{h}", are you able to determine the if it entail from the following paragraph?',
                "human": f'Consider the statement "{h}", is a human able to determine the if it entail from the following paragraph?',
                "default": f'Consider the statement "{h}", is it possible to determine the if it entail from the following paragraph?'}[who]
        if options:
            text += " There is either entailment, no entailment, or it's unknown."
    else:
        q = s.question
        text = {"you": f'Are you able to answer the question "{q}" based on the following paragraph?',
                "human": f'Is a human able to answer the question "{q}" based on the following paragraph?',
                "default": f'Is it possible to answer the question "{q}" based on the following paragraph?'}[who]
        if options:
            text += f" The possible answers to the question are {_options(list(s.choices))}."
    return text + ' Answer only "yes" or "no".' + _tail(s.paragraph)


def introspect_importance(s: Sample, flags: set[str]) -> str:
    text = _lead(s, "List") + f" such that without these words {_without(s, _persona(flags, 'e'), garbled_human=True)}."
    return text + _tail(s.paragraph)


def introspect_prompt(task: str, s: Sample, flags: set[str]) -> str:
    """The first prompt introspect sends for ``task`` (classify) or its explanation prompt."""
    if task == "classify":
        return introspect_classify(s, s.paragraph, flags)
    return {"answerable": introspect_answerable, "counterfactual": introspect_counterfactual, "redacted": introspect_redacted,
            "importance": introspect_importance}[task](s, flags)


SYNTHETIC = (
    Sample(0, SENTIMENT, "A great film. I loved the cast.", "positive"),
    Sample(1, SENTIMENT, "Dull and long.", "negative"),
    Sample(2, ENTAILMENT, "Dana Reeve died at 44.", "no", hypothesis="Christopher Reeve had an accident."),
    Sample(3, ENTAILMENT, "The cat sat on the mat.", "yes", hypothesis="A cat sat."),
    Sample(4, MULTI_CHOICE, "John travelled to the hallway.", "hallway", question="Where is John?",
           choices=("bathroom", "hallway", "kitchen")),
    Sample(5, MULTI_CHOICE, "Mary went back to the kitchen.", "kitchen", question="Where is Mary?", choices=("kitchen",)),
    Sample(6, MULTI_CHOICE, "Sam ate an apple.\nThen a pear.", "pear", question="What did Sam eat last?",
           choices=("apple", "pear")),
)

#: Every task config a run can give: each persona triple (none, you, human) and the five switches.
SWITCHES = ("m-removed", "c-no-redacted", "i-options", "e-implcit-target", "e-short")
ALL_CONFIGS = [
    {f for f in (c, i, e, *switches) if f}
    for c in (None, "c-persona-you", "c-persona-human")
    for i in (None, "i-persona-you", "i-persona-human")
    for e in (None, "e-persona-you", "e-persona-human")
    for switches in itertools.product(*[(None, f) for f in SWITCHES])
]


def _real_samples() -> list[Sample]:
    if not (SHARED_DATA / "faithfulness").is_dir():
        return []
    out = []
    for name in ("imdb", "sst2", "rte", "babi1", "babi2", "babi3", "mctest"):
        ds = load_faithfulness_dataset(name, SHARED_DATA, allow_hub=False)
        out.extend(ds.samples[:2])
        if name == "babi1":  # the single-choice case of the issue, when the sample holds one
            out.extend([s for s in ds.samples if len(s.choices) == 1][:1])
    return out


def _iti_prompt(task: str, s: Sample, flags: set[str]) -> str:
    opts = prompt_options(normalize_config(task, flags))  # the defaults: no prompt option given
    return classify_prompt(s, s.paragraph, opts) if task == "classify" else EXPLAIN_PROMPTS[task](s, opts)


@pytest.mark.parametrize("task", TASKS)
def test_every_prompt_is_introspects_text_for_every_config(task):
    samples = list(SYNTHETIC) + _real_samples()
    checked = 0
    for s, flags in itertools.product(samples, ALL_CONFIGS):
        # introspect takes any flag for any task; iti drops the ones the task ignores, which must change nothing
        assert _iti_prompt(task, s, flags) == introspect_prompt(task, s, flags), (task, s.idx, sorted(flags))
        checked += 1
    assert checked == len(samples) * 3 ** 3 * 2 ** 5


def test_reclassify_prompt_is_the_classify_prompt_on_the_explanation():
    for s, flags in itertools.product(SYNTHETIC, ALL_CONFIGS):
        for task in ("counterfactual", "redacted", "importance"):
            opts = prompt_options(normalize_config(task, flags))
            assert classify_prompt(s, "Edited text.", opts) == introspect_classify(s, "Edited text.", flags)


def test_pinned_prompt_strings():
    imdb, babi_one = SYNTHETIC[0], SYNTHETIC[5]
    assert introspect_classify(imdb, imdb.paragraph, set()) == (
        'What is the sentiment of the following paragraph? The paragraph can contain redacted words marked with '
        '[REDACTED]. Answer only "positive", "negative", "neutral", or "unknown". Do not explain the answer.\n\n'
        'Paragraph: A great film. I loved the cast.')
    single = _iti_prompt("counterfactual", babi_one, {"e-implcit-target"})
    assert single == (
        'Edit the following paragraph such that the answer to the question "Where is Mary?" is different from how it '
        'should currently be answered. The possible answer options, including the current answer, are , and a) '
        '"kitchen". Make as few edits as possible. Do not explain the answer.\n\nParagraph: Mary went back to the kitchen.')
    fixed = EXPLAIN_PROMPTS["counterfactual"](babi_one, prompt_options(["e-implcit-target"], fix_typos=True))
    assert 'are and a) "kitchen".' in fixed  # the fixed text keeps the readable form
    assert answer_choices(["x"], "and") == ', and a) "x"' and answer_choices(["x"], "and", fix_typos=True) == 'and a) "x"'
    assert answer_choices(["x", "y"], "or", fix_typos=True) == answer_choices(["x", "y"]) == 'a) "x", or b) "y"'




def introspect_falcon_render(user: str) -> str:
    # introspect's Falcon rendering of one user turn: system message line, "User: ..." line, then "Falcon:"
    return f"{FALCON_PREAMBLE}\nUser: {user}\nFalcon:"


@pytest.mark.skipif(not (SHARED_DATA / "faithfulness").is_dir(), reason="needs the shared faithfulness data")
@pytest.mark.parametrize("task_config", [(), ("c-persona-you", "e-persona-human", "i-options", "e-short"),
                                         ("c-persona-human", "e-persona-you", "i-persona-you")])
def test_a_default_run_sends_introspects_prompts_byte_for_byte(tmp_path, monkeypatch, task_config):
    """``iti faithfulness`` with no prompt option: every classify and explanation prompt it records is introspect's
    text, and what reaches the model is introspect's Falcon rendering of it, preamble included."""
    from iti.faithfulness.experiment import FaithfulnessConfig, run_faithfulness

    from ..conftest import make_tiny_model, tiny_tokenizer

    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "iti-cache"))
    make_tiny_model("llama").save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    cfg = FaithfulnessConfig(model=str(tmp_path / "ckpt"), datasets=("imdb", "rte", "babi1", "mctest"),
                             tasks=("answerable", "counterfactual", "redacted", "importance"), task_config=task_config,
                             max_samples=3,
                             max_new_tokens=2, classify_max_new_tokens=2, chat_format="falcon",
                             output_dir=str(tmp_path / "out"), cache=str(tmp_path / "c.sqlite"), progress=False)
    run_faithfulness(cfg)
    by_name = {name: load_faithfulness_dataset(name, SHARED_DATA, allow_hub=False) for name in cfg.datasets}
    checked, flags = 0, set(task_config)
    for path in sorted((tmp_path / "out" / "samples").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            d = json.loads(line)
            s = next(x for x in by_name[d["dataset"]].samples if x.idx == d["idx"])
            for step, want in (("classify", introspect_classify(s, s.paragraph, flags)),
                               ("explain", introspect_prompt(d["task"], s, flags))):
                assert d[step]["prompt"] == want, (d["dataset"], d["task"], s.idx, step)
                assert d[step]["rendered_prompt"] == introspect_falcon_render(want)
                checked += 1
            if d["task"] == "answerable":  # introspect's verdict, from its _process_is_introspect, and its parse
                ability = {"yes": "yes", "yes.": "yes", "no": "no", "no.": "no"}.get((d["explain"]["response"] or "").lower())
                assert d["explain_predict"] == ability
                yes_means = {SENTIMENT: d["predict"] in ("positive", "negative", "neutral"),
                             ENTAILMENT: d["predict"] in ("yes", "no"), MULTI_CHOICE: d["predict"] != "unknown"}[s.kind]
                assert d["faithful"] == (None if ability is None else yes_means if ability == "yes"
                                         else d["predict"] == "unknown")
    assert checked == 4 * 4 * 3 * 2


def test_task_config_flags_apply_where_they_mean_something():
    applied, ignored = task_configs(("classify", "counterfactual"), ["e-implcit-target", "m-removed"])
    assert applied == {"classify": ("m-removed",), "counterfactual": ("e-implcit-target", "m-removed")}
    assert ignored == {"classify": ("e-implcit-target",)}


# ---------------------------------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------------------------------

P = "The movie was bad."
Q = "The [REDACTED] movie was [REDACTED]."

#: (id, answer, introspect's extract_paragraph result), each worked out from the current code's order of rules.
FALCON_ANSWERS = [
    # issue 16: HTML is stripped before markers and refusals are looked for
    ("html-sure-heres-then-p", f"Sure, here's the redacted paragraph:<p>{P}</p>", P),
    ("html-here-is-then-br", f"Here is the redacted paragraph:<br>{P}", P),
    ("html-marker-inside-p", f"<p>Here is the edited paragraph:</p><p>{P}</p>", P),
    ("html-refusal-inside-p", "<p>Sorry, I cannot do that.</p>", None),
    ("html-heres-without-colon-br", f"Here's the paragraph<br>{P}", P),
    # the current phrase lists
    ("based-on-the-review-not-a-lead-in", f"Based on the review, here is an edited version\n{P}",
     f"Based on the review, here is an edited version\n{P}"),
    ("based-on-your-input", f"Based on your input, I edited the paragraph.\n{P}", P),
    ("based-on-my-analysis", f"Based on my analysis, the words are\n{Q}", Q),
    ("paragraph-are-as-follows", f"The changes to the paragraph are as follows: {P}", P),
    ("thank-you-for-your-feedback", f"Thank you for your feedback.\n{P}", P),
    ("i-am-sorry-then-thank-you-is-a-refusal", f"I am sorry,Thank you for your feedback.\n{P}", None),
    # Falcon: turn markers (a stop string is only removed at the very end of an answer)
    ("falcon-user-turn-left-in", f"{P}\nUser: Thanks!", f"{P}\nUser: Thanks!"),
    ("falcon-turn-marker-then-text", f"Falcon: {P}", f"Falcon: {P}"),
    ("falcon-user-falcon-after-marker", f"Paragraph: {P}\nUser: can you do another?\nFalcon: Sure.",
     f"{P}\nUser: can you do another?\nFalcon: Sure."),
    # Falcon: <p>, <br>, lists, blockquotes
    ("falcon-p-after-word", f"Sure! Here is the edited text<p>{P}</p><p>I hope this helps.</p>", f"{P}\n\nI hope this helps."),
    ("falcon-p-at-start", f"<p>{P}</p>", P),
    ("falcon-p-after-newline-not-cut", f"Sure, here is the edited paragraph.\n<p>{P}</p>", P),
    ("falcon-two-paragraphs", f"<p>{P}</p>\n<p>It was really bad.</p>", f"{P}\n\nIt was really bad."),
    ("falcon-br-lines", f"{P}<br>It was really bad.<br />The end.", f"{P}\nIt was really bad.\nThe end."),
    ("falcon-ul-li", "Changes<ul><li>bad</li><li>awful</li></ul>", "* bad* awful"),
    ("falcon-ol-li-suggestions", "Here are some suggestions:<ol><li>Bad movie.</li><li>Awful movie.</li></ol>", None),
    ("falcon-one-suggestion-p", f"Here are some suggestions:<p>{P}</p>", P),
    ("falcon-blockquote", f"Edited:<blockquote>{P}</blockquote>", f"Edited:\n\n{P}"),
    ("falcon-blockqoute-typo-cut", f"Edited<blockqoute>{P}</blockqoute>", f"<blockqoute>{P}</blockqoute>"),
    ("falcon-P-uppercase", f"Edited<P>{P}</P>", P),
    ("falcon-li-uppercase-kept", "<ul><LI>bad</LI></ul>", "<LI>bad</LI>"),
    ("falcon-empty-p", "<p></p>", None),
    # markdown fences and "Sure!" lines
    ("falcon-markdown-fence", f"Here is the edited paragraph:\n```\n{P}\n```", f"```\n{P}\n```"),
    ("falcon-markdown-fence-only", f"```\n{P}\n```", f"```\n{P}\n```"),
    ("falcon-sure-bang-line", f"Sure!\n{P}", f"Sure!\n{P}"),
    ("falcon-sure-bang-heres", f"Sure! Here's an edited version.\n\n{P}", P),
    ("falcon-sure-thing", f"Sure thing! Here's the paragraph\n\"{P}\"", P),
    ("falcon-quoted-in-p", f"<p>\"{P}\"</p>", P),
    ("falcon-redacted-in-p", f"Here is the redacted paragraph:<p>{Q}</p>", Q),
    ("falcon-here-is-br-then-quotes", f"Here is the paragraph:<br>\"{P}\"", P),
    ("falcon-here-is-in-p-then-text", f"<p>Here is my version:</p>{P}", P),
    # refusals in HTML
    ("falcon-refusal-ai-in-p", "<p>As an AI language model, I cannot edit reviews.</p>", None),
    ("falcon-refusal-i-am-sorry-br", "I am sorry,<br>I cannot help.", None),
    ("falcon-hi-in-p", "<p>Hi User! How can I help?</p>", None),
    ("falcon-cannot-determine-in-p", "<p>I cannot determine the answer.</p>", None),
    ("falcon-programming-refusal-br", "Editing reviews<br>goes against my programming.", None),
    # markers and lead-ins after HTML
    ("falcon-marker-to-colon", f'I changed "good" to: <p>{P}</p>', P),
    ("falcon-sentiment-marker", f"Sentiment: negative<br>{P}", f"negative\n{P}"),
    ("falcon-this-paragraph-p", f"<p>This paragraph has been edited.</p><p>{P}</p>", P),
    ("falcon-thank-you-sharing-br", f"Thank you for sharing your thoughts<br>{P}", P),
]


@pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=i) for i, t, e in FALCON_ANSWERS])
def test_falcon_style_answers_parse_as_introspect(text, expected):
    assert extract_paragraph(text) == expected


def test_enough_falcon_style_answers():
    assert len([row for row in FALCON_ANSWERS if row[0].startswith("falcon-")]) >= 20


HTML_PIECES = st.sampled_from([
    "<p>", "</p>", "<P>", "<br>", "<br />", "<BR>", "<ul>", "</ul>", "<ol>", "<li>", "</li>", "<blockquote>", "<blockqoute>",
    "Sorry,", "I am sorry,", "Hi ", "as an AI language model", "Paragraph:", "to:", "Here is the text:", "Here's",
    "Sure, here's", "Based on your input", "Based on the", "paragraph are as follows:", "Thank you for your feedback.",
    "User:", "Falcon:", "```", "Sure!", "\n", "\n\n", " ", '"', "word", "Bad movie.", "here are some suggestions", "- ",
])
HTML_TEXT = st.one_of(st.text(max_size=200), st.lists(HTML_PIECES, max_size=30).map("".join))
_GONE_TAGS = ("<p>", "</p>", "<ul>", "</ul>", "<ol>", "</ol>", "<blockquote>", "</blockquote>", "<br>", "<br />")


@settings(max_examples=400, deadline=None)
@given(HTML_TEXT)
def test_paragraph_is_cut_from_the_html_stripped_answer(text):
    p = extract_paragraph(text)
    assert p is None or (isinstance(p, str) and p)
    if p is None:
        return
    # HTML is stripped first: no block or break tag survives (any case); <li> is replaced case-sensitively
    assert not any(tag in p.lower() for tag in _GONE_TAGS) and "<li>" not in p and "</li>" not in p
    # everything after the stripping only cuts: the result lies inside the stripped text
    assert p in _remove_html(text) or p in _remove_html(text[text.find("<"):])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["I am sorry,", "Sorry,", "I cannot determine", "Hi "]),
       st.from_regex(r"[A-Za-z][A-Za-z ,.!]{0,40}", fullmatch=True), st.sampled_from(["", "<p>", "<br>", " \n", "<p>\n "]))
def test_a_refusal_behind_html_or_whitespace_is_a_refusal(start, rest, wrapper):
    assert extract_paragraph(wrapper + start + rest) is None


@settings(max_examples=300, deadline=None)
@given(HTML_TEXT)
def test_class_parsers_return_a_class_or_none(text):
    assert extract_sentiment(text) in ("positive", "negative", "neutral", "unknown", None)
    assert extract_entailment(text) in ("yes", "no", "unknown", None)
    assert extract_choice(["bathroom", "hallway"], text) in ("bathroom", "hallway", "unknown", None)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def _result(label="positive", *, predict=None, correct=None, error=None, explain=False, faithful=None) -> SampleResult:
    r = SampleResult(0, label, Step("q", None if error else "a", error), predict=predict, correct=correct)
    if explain:
        r.explain, r.faithful = Step("e", "x"), faithful
    return r


def test_aggregation_and_formulas_are_introspects():
    # introspect: an error is counted as error; else a None correct or faithful is a missmatch; else it counts
    results = [
        _result(error="timeout", explain=True),
        _result(predict=None, correct=None, explain=True, faithful=True),         # first answer unparsable
        _result(predict="positive", correct=True, explain=True, faithful=None),   # explanation unparsable
        _result(predict="positive", correct=True, explain=True, faithful=True),
        _result(predict="positive", correct=True, explain=True, faithful=False),
        _result(predict="negative", correct=False, explain=True, faithful=True),
    ]
    s = summarize(results)
    assert (s.total, s.error, s.mismatch, s.correct, s.faithful, s.faithful_and_correct) == (6, 1, 2, 2, 2, 1)
    assert s.accuracy == 2 / (6 - 2)         # correct / (total - missmatch): errors stay in the denominator
    assert s.faithfulness == 1 / 2           # faithful_and_correct / correct


def test_first_answer_accuracy_uses_introspects_denominator():
    # the example: 83 correct of 332 parsed, 68 generation errors among 400: introspect 0.2075, not 0.25
    stats = {"total": 400, "error": 68, "unparsable": 0, "parsed": 332, "correct": 83}
    assert first_answer_accuracy(stats) == pytest.approx(0.2075)
    results = [_result(error="boom")] * 2 + [_result(predict=None)] + [_result(predict="positive", correct=True)] + \
        [_result(predict="negative", correct=False)] * 3
    st_ = first_answer_stats(results)
    assert st_ == {"total": 7, "error": 2, "unparsable": 1, "parsed": 4, "correct": 1}
    assert first_answer_accuracy(st_) == 1 / (7 - 1)
    assert math.isnan(first_answer_accuracy({"total": 1, "error": 0, "unparsable": 1, "parsed": 0, "correct": 0}))


def test_report_names_the_accuracy_figure_per_row():
    assert accuracy_name("classify") == "classify accuracy"
    assert accuracy_name("counterfactual") == accuracy_name("importance") == "first-answer accuracy, scored samples"
    plain = [_result(predict="positive", correct=True, explain=True, faithful=True)]
    c = compare_arms(plain, plain, explain=True)
    table = comparison_markdown([{"dataset": "imdb", "task": "counterfactual", "comparison": c},
                                 {"dataset": "imdb", "task": "classify", "comparison": compare_arms(plain, plain, False)}])
    assert "| imdb | counterfactual | 1 | first-answer accuracy, scored samples |" in table
    assert "| imdb | classify | 1 | classify accuracy |" in table
