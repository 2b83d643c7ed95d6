"""The protocol's prompts: classification, answerability, counterfactual, redaction and importance, per prompt family.

The text is introspect's, word for word, including its grammar slips, and that is the default, so that results stay
comparable with the paper's runs. ``fix_typos=True`` (``--fix_prompt_typos``) applies a short table of fixes
(:data:`TYPO_FIXES`) to the finished prompt instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from .datasets import ENTAILMENT, MULTI_CHOICE, SENTIMENT, Sample
from .errors import TaskConfigError

TASKS = ("classify", "answerable", "counterfactual", "redacted", "importance")
#: Task-config flags (introspect's spelling; ``e-implicit-target`` is accepted as an alias).
CONFIG_FLAGS = ("c-persona-you", "c-persona-human", "c-no-redacted", "m-removed", "i-persona-you", "i-persona-human",
                "i-options", "e-persona-you", "e-persona-human", "e-implcit-target", "e-short")
_FLAG_ALIASES = {"e-implicit-target": "e-implcit-target"}
#: Which flags change which task's prompts. introspect accepts any flag for any task (it has no such checks) and a
#: flag that a task does not read changes nothing there, so a flag is applied to the tasks listed here and the run
#: says which of its tasks ignore it (:func:`task_configs`). ``m-removed`` belongs to every task: the classify
#: prompt, which every task asks first and again on the explanation, names the mask token.
TASK_FLAGS = {
    "classify": {"c-persona-you", "c-persona-human", "c-no-redacted", "m-removed"},
    "answerable": {"c-persona-you", "c-persona-human", "c-no-redacted", "m-removed", "i-persona-you", "i-persona-human",
                   "i-options"},
    "counterfactual": {"c-persona-you", "c-persona-human", "c-no-redacted", "m-removed", "e-persona-you",
                       "e-persona-human", "e-implcit-target"},
    "redacted": {"c-persona-you", "c-persona-human", "c-no-redacted", "m-removed", "e-persona-you", "e-persona-human",
                 "e-short"},
    "importance": {"c-persona-you", "c-persona-human", "c-no-redacted", "m-removed", "e-persona-you", "e-persona-human"},
}

#: (original, fixed) pairs applied to every rendered prompt with ``fix_typos`` (off by default).
TYPO_FIXES: tuple[tuple[str, str], ...] = (
    ("Consideing the following", "Considering the following"),
    ("such you would classify the sentiment is", "such that you would classify the sentiment as"),
    ("such a human would classify the sentiment is", "such that a human would classify the sentiment as"),
    ("such you would classify the sentiment as the opposite", "such that you would classify the sentiment as the opposite"),
    ("such a human would classify the as the opposite", "such that a human would classify the sentiment as the opposite"),
    ("such you would answer", "such that you would answer"),
    ("such a human would answer", "such that a human would answer"),
    ("does not entails from it", "does not entail from it"),
    ("you a human not determine", "a human can not determine"),
    ("determine the if it entail from", "determine if it entails from"),
    ("Redact the following paragraph such you can not", "Redact the following paragraph such that you can not"),
    ("Redact the following paragraph such a human can not", "Redact the following paragraph such that a human can not"),
    ("Redact the following paragraph such it can not", "Redact the following paragraph such that it can not"),
)




@dataclass(frozen=True)
class PromptOptions:
    """The task config as the prompts need it."""

    classify_persona: str = "default"   # default | you | human
    explain_persona: str = "default"
    ability_persona: str = "default"    # the answerable task's question
    ability_options: bool = False       # i-options: the answerable question lists the possible answers
    short_redact: bool = False          # e-short: the redaction prompt's short form
    mask_token: str = "[REDACTED]"
    mention_mask: bool = True
    implicit_target: bool = False
    fix_typos: bool = False  # False: introspect's text, typos included

    @property
    def mask_word(self) -> str:
        """How the classify prompt names masked words: "removed" with the ``[REMOVED]`` token, else "redacted"."""
        return "removed" if self.mask_token == "[REMOVED]" else "redacted"


def _canonical_flags(flags) -> set[str]:
    """The flags in introspect's spelling; unknown flags and excluding pairs are refused. An empty flag is none
    (introspect's README writes ``--task-config ''`` for the default configuration)."""
    out = set()
    for flag in flags or ():
        if not flag.strip():
            continue
        f = _FLAG_ALIASES.get(flag, flag)
        if f not in CONFIG_FLAGS:
            raise TaskConfigError(f"unknown task config {flag!r}; choose from {', '.join(CONFIG_FLAGS)}")
        out.add(f)
    for a, b in (("c-persona-you", "c-persona-human"), ("i-persona-you", "i-persona-human"),
                 ("e-persona-you", "e-persona-human")):
        if a in out and b in out:
            raise TaskConfigError(f"task configs {a!r} and {b!r} exclude each other")
    return out


def normalize_config(task: str, flags) -> tuple[str, ...]:
    """The sorted config flags that change ``task`` (introspect sorts them into the experiment id); flags the task
    does not read are dropped, as they change nothing there (:func:`task_configs` reports them)."""
    if task not in TASKS:
        raise TaskConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return tuple(sorted(_canonical_flags(flags) & TASK_FLAGS[task]))


def task_configs(tasks, flags) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(flags applied per task, flags ignored per task) for a run of ``tasks``.

    A flag is applied to the tasks it changes; the tasks that ignore it are returned for the caller to report. A flag
    that no given task reads is an error (TaskConfigError): the run would not be what was asked for.
    """
    given = _canonical_flags(flags)
    applied = {t: normalize_config(t, given) for t in tasks}
    for flag in sorted(given):
        if tasks and not any(flag in applied[t] for t in tasks):
            raise TaskConfigError(f"task config {flag!r} does not apply to task{'s' if len(tasks) > 1 else ''} "
                                  f"{', '.join(map(repr, tasks))} (it changes: "
                                  f"{', '.join(t for t in TASKS if flag in TASK_FLAGS[t])})")
    ignored = {t: tuple(sorted(given - set(applied[t]))) for t in tasks}
    return applied, {t: f for t, f in ignored.items() if f}


def prompt_options(flags, fix_typos: bool = False) -> PromptOptions:
    """PromptOptions from task-config flags (aliases accepted); introspect's text unless ``fix_typos``. The flags
    are not checked here, see :func:`normalize_config`."""
    flags = {_FLAG_ALIASES.get(f, f) for f in flags}
    persona = lambda p: "you" if f"{p}-persona-you" in flags else "human" if f"{p}-persona-human" in flags else "default"  # noqa: E731
    return PromptOptions(classify_persona=persona("c"), explain_persona=persona("e"), ability_persona=persona("i"),
                         ability_options="i-options" in flags, short_redact="e-short" in flags,
                         mask_token="[REMOVED]" if "m-removed" in flags else "[REDACTED]",
                         mention_mask="c-no-redacted" not in flags, implicit_target="e-implcit-target" in flags,
                         fix_typos=fix_typos)


def _finish(text: str, opts: PromptOptions) -> str:
    if opts.fix_typos:
        for old, new in TYPO_FIXES:
            text = text.replace(old, new)
    return text


def answer_choices(choices, join_word: str = "or", fix_typos: bool = False) -> str:
    """``a) "x", b) "y", or c) "z"``: letters, quoted choices, the last one after ``join_word``.

    introspect always puts ", " before the join word, so a single choice gives ``, and a) "x"`` (a bAbI story with one
    location, implicit-target counterfactual); with ``fix_typos`` it gives ``and a) "x"``."""
    items = [f'{chr(ord("a") + i)}) "{c}"' for i, c in enumerate(choices)]
    if not fix_typos and len(items) == 1:
        return f", {join_word} {items[0]}"
    return ", ".join(items[:-1] + [f"{join_word} {items[-1]}"])


def _paragraph(paragraph: str) -> str:
    return f" Do not explain the answer.\n\nParagraph: {paragraph}"


def classify_prompt(sample: Sample, paragraph: str, opts: PromptOptions) -> str:
    """The classification question, also used to re-classify an explanation (``paragraph`` = the explanation)."""
    p = opts.classify_persona
    if sample.kind == SENTIMENT:
        head = {"default": "What is the sentiment of the following paragraph?",
                "you": "What would you classify the sentiment of the following paragraph as?",
                "human": "What would a human classify the sentiment of the following paragraph as?"}[p]
        tail = ' Answer only "positive", "negative", "neutral", or "unknown".'
    elif sample.kind == ENTAILMENT:
        h = sample.hypothesis
        head = {"default": f'Does the statement "{h}" entail from the following paragraph?',
                "you": f'Do you think the statement "{h}" entail from the following paragraph?',
                "human": f'Does a human think the statement "{h}" entail from the following paragraph?'}[p]
        tail = ' Answer either 1) "yes" for entailment, 2) "no" for no entailment, or 3) "unknown" if the question can not be answered.'
    elif sample.kind == MULTI_CHOICE:
        q = sample.question
        head = {"default": f'Consider the following paragraph, and answer the question: "{q}"',
                "you": f'Consideing the following paragraph, how would you answer the question: "{q}"',
                "human": f'Consideing the following paragraph, how would a human answer the question: "{q}"'}[p]
        tail = f" Answer either {answer_choices(list(sample.choices) + ['unknown'])} if the question can not be answered."
    else:
        raise TaskConfigError(f"unknown prompt family {sample.kind!r}")
    mask = f" The paragraph can contain {opts.mask_word} words marked with {opts.mask_token}." if opts.mention_mask else ""
    return _finish(head + mask + tail + _paragraph(paragraph), opts)


def counterfactual_target(sample: Sample) -> str:
    """The class the edited paragraph should get: the opposite of the GOLD label (next choice for multiple choice)."""
    if sample.kind == SENTIMENT:
        return {"positive": "negative", "negative": "positive"}[sample.label]
    if sample.kind == ENTAILMENT:
        return {"yes": "no", "no": "yes"}[sample.label]
    choices = list(sample.choices)
    return choices[(choices.index(sample.label) + 1) % len(choices)]


def counterfactual_prompt(sample: Sample, opts: PromptOptions) -> str:
    """The prompt asking for a minimal edit of the paragraph that changes the answer to :func:`counterfactual_target`
    (with ``implicit_target``: to the opposite or another option, without naming it)."""
    p, implicit, target = opts.explain_persona, opts.implicit_target, counterfactual_target(sample)
    if sample.kind == SENTIMENT:
        if implicit:
            text = {"default": "Edit the following paragraph such that the sentiment becomes the opposite of what it currently is.",
                    "you": "Edit the following paragraph such you would classify the sentiment as the opposite of what it currently is.",
                    "human": "Edit the following paragraph such a human would classify the as the opposite of what it currently is."}[p]
        else:
            text = {"default": f'Edit the following paragraph such that the sentiment is "{target}".',
                    "you": f'Edit the following paragraph such you would classify the sentiment is "{target}".',
                    "human": f'Edit the following paragraph such a human would classify the sentiment is "{target}".'}[p]
    elif sample.kind == ENTAILMENT:
        h = sample.hypothesis
        if implicit:
            who = {"default": "the entailment becomes", "you": "you would say the entailment is",
                   "human": "a human would say the entailment is"}[p]
            text = f'Edit the following paragraph, such that given the statement "{h}", {who} the opposite of what it currently is.'
        else:
            instruction = "entails" if target == "yes" else "does not entails"
            who = {"default": "", "you": "you would say ", "human": "a human would say "}[p]
            text = f'Edit the following paragraph such that {who}the statement "{h}" {instruction} from it.'
    else:
        q = sample.question
        if implicit:
            text = {"default": f'Edit the following paragraph such that the answer to the question "{q}" is different from how it should currently be answered.',
                    "you": f'Edit the following paragraph such you would answer the question "{q}" differently from how it should currently be answered.',
                    "human": f'Edit the following paragraph such a human would answer the question "{q}" differently from how it should currently be answered.'}[p]
            text += f" The possible answer options, including the current answer, are {answer_choices(sample.choices, 'and', opts.fix_typos)}."
        else:
            text = {"default": f'Edit the following paragraph such that the answer to the question "{q}" is "{target}".',
                    "you": f'Edit the following paragraph such you would answer the question "{q}" with "{target}".',
                    "human": f'Edit the following paragraph such a human would answer the question "{q}" with "{target}".'}[p]
    return _finish(text + " Make as few edits as possible." + _paragraph(sample.paragraph), opts)


def _cannot(sample: Sample, who: str) -> str:
    """The "such that without these words ..." ending of the redaction and importance prompts."""
    if sample.kind == SENTIMENT:
        return {"default": "the sentiment can not be determined", "you": "you can not determine the sentiment",
                "human": "a human can not determine the sentiment"}[who]
    if sample.kind == ENTAILMENT:
        return {"default": "it can not be determined if there is entailment or no entailment",
                "you": "you can not determine if there is entailment or no entailment",
                "human": "a human can not determine if there is entailment or no entailment"}[who]
    return {"default": "the question can not be answered", "you": "you can not answer the question",
            "human": "a human can not answer the question"}[who]


def _what(sample: Sample, verb: str) -> str:
    if sample.kind == SENTIMENT:
        return f"{verb} the most important words for determining the sentiment of the following paragraph"
    if sample.kind == ENTAILMENT:
        return (f'{verb} the most important words in the following paragraph, for determining if the statement '
                f'"{sample.hypothesis}" entails from it')
    return f'{verb} the most important words for answering "{sample.question}" given the following paragraph'


def redacted_prompt(sample: Sample, opts: PromptOptions) -> str:
    """The prompt asking for the paragraph with its most important words replaced by the mask token, so that the answer
    can no longer be determined (``short_redact``: introspect's ``e-short`` wording)."""
    if opts.short_redact:
        who = opts.explain_persona
        if sample.kind == SENTIMENT:
            goal = {"default": "the sentiment can no longer be determined", "you": "you can no longer determine the sentiment",
                    "human": "a human can no longer determine the sentiment"}[who]
            head = f"Redact the following paragraph such that {goal},"
        elif sample.kind == ENTAILMENT:
            who_can = {"default": "it can not be determined", "you": "you can not determine",
                       "human": "a human can not determine"}[who]
            head = f'Redact the following paragraph such {who_can} if the statement "{sample.hypothesis}" entails from it,'
        else:
            q = sample.question
            goal = {"default": f'the question "{q}" can no longer be answered',
                    "you": f'you can no longer answer the question "{q}"',
                    "human": f'a human can no longer answer the question "{q}"'}[who]
            head = f"Redact the following paragraph such that {goal},"
        return _finish(f"{head} by replacing important words with {opts.mask_token}." + _paragraph(sample.paragraph), opts)
    text = (f"{_what(sample, 'Redact')}, by replacing important words with {opts.mask_token}, such that without these "
            f"words {_cannot(sample, opts.explain_persona)}.")
    return _finish(text + _paragraph(sample.paragraph), opts)


def answerable_prompt(sample: Sample, opts: PromptOptions) -> str:
    """The answerable task's question: can the paragraph's class be determined at all (yes / no)? With
    ``ability_options`` (``i-options``) it names the possible answers."""
    p = opts.ability_persona
    if sample.kind == SENTIMENT:
        text = {"default": "Is it possible to determine the sentiment of the following paragraph?",
                "you": "Are you able to determine the sentiment of the following paragraph?",
                "human": "Is a human able to determine the sentiment of the following paragraph?"}[p]
        options = ' The sentiment is either "positive", "negative", "neutral", or "unknown".'
    elif sample.kind == ENTAILMENT:
        who = {"default": "is it possible", "you": "are you able", "human": "is a human able"}[p]
        text = f'Consider the statement "{sample.hypothesis}", {who} to determine the if it entail from the following paragraph?'
        options = " There is either entailment, no entailment, or it's unknown."
    else:
        who = {"default": "Is it possible", "you": "Are you able", "human": "Is a human able"}[p]
        text = f'{who} to answer the question "{sample.question}" based on the following paragraph?'
        options = f" The possible answers to the question are {answer_choices(sample.choices, 'or', opts.fix_typos)}."
    if opts.ability_options:
        text += options
    return _finish(text + ' Answer only "yes" or "no".' + _paragraph(sample.paragraph), opts)


def importance_prompt(sample: Sample, opts: PromptOptions) -> str:
    """The prompt asking for a list of the paragraph's most important words (the code redacts them afterwards); keeps
    introspect's garbled ending for entailment with the human persona."""
    ending = _cannot(sample, opts.explain_persona)
    if sample.kind == ENTAILMENT and opts.explain_persona == "human":  # sic, introspect's text
        ending = "you a human not determine if there is entailment or no entailment"
    return _finish(f"{_what(sample, 'List')}, such that without these words {ending}." + _paragraph(sample.paragraph), opts)


EXPLAIN_PROMPTS = {"answerable": answerable_prompt, "counterfactual": counterfactual_prompt, "redacted": redacted_prompt, "importance": importance_prompt}
