"""The faithfulness protocol without a model: data sets, prompts, task configs, scoring of fixed responses, stats."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iti.errors import EmptyInputError
from iti.faithfulness.cache import CachedGeneration
from iti.faithfulness.datasets import ENTAILMENT, MULTI_CHOICE, SENTIMENT, Sample, UnknownDatasetError, load_faithfulness_dataset
from iti.faithfulness.generate import CachedGenerator, GenerationSettings
from iti.faithfulness.prompts import (
    TASKS,
    TaskConfigError,
    answer_choices,
    classify_prompt,
    counterfactual_prompt,
    counterfactual_target,
    importance_prompt,
    normalize_config,
    prompt_options,
    redacted_prompt,
    task_configs,
)
from iti.faithfulness.report import bootstrap_ratio, compare_arms, comparison_markdown, mcnemar_exact
from iti.faithfulness.tasks import run_task, summarize

from ..conftest import SHARED_DATA

IMDB = Sample(7, SENTIMENT, "A great film. I loved the cast.", "positive")
RTE = Sample(3, ENTAILMENT, "Dana Reeve died at 44.", "no", hypothesis="Christopher Reeve had an accident.")
BABI = Sample(0, MULTI_CHOICE, "John travelled to the hallway.", "hallway", question="Where is John?",
              choices=("bathroom", "hallway", "kitchen"))
DEFAULT = prompt_options(())


# --- data sets --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,n,kind,labels", [
    ("imdb", 1000, SENTIMENT, {"positive", "negative"}),
    ("rte", 277, ENTAILMENT, {"yes", "no"}),
    ("babi1", 1000, MULTI_CHOICE, None),
    ("mctest", 600, MULTI_CHOICE, None),
])
def test_datasets_load_in_protocol_shape(name, n, kind, labels):
    ds = load_faithfulness_dataset(name, allow_hub=False)
    assert (len(ds), ds.kind) == (n, kind)
    if labels:
        assert {s.label for s in ds.samples} == labels
    else:
        assert all(list(s.choices) == sorted(s.choices) and s.label in s.choices and s.question for s in ds.samples)
    assert all("<br />" not in s.paragraph for s in ds.samples)
    assert len({s.idx for s in ds.samples}) == n


def test_dataset_order_is_the_seeded_shuffle():
    a, b, c = (load_faithfulness_dataset("rte", allow_hub=False, seed=s) for s in (0, 0, 1))
    assert [s.idx for s in a.samples] == [s.idx for s in b.samples] != [s.idx for s in c.samples]
    # datasets.Dataset.shuffle(seed=0) order: numpy's default_rng(0) permutation of the file order
    assert [s.idx for s in a.samples[:5]] == list(np.random.default_rng(0).permutation(277)[:5])
    first = next(s for s in a.samples if s.idx == 0)  # GLUE RTE validation idx 0: not_entailment -> "no"
    assert first.label == "no" and first.paragraph.startswith("Dana Reeve")


def test_dataset_errors_are_specific(tmp_path, monkeypatch):
    with pytest.raises(UnknownDatasetError, match="choose one of imdb, sst2, rte, babi1, babi2, babi3, mctest"):
        load_faithfulness_dataset("yelp")
    with pytest.raises(UnknownDatasetError, match="unknown split 'dev'; choose one of train, valid, test"):
        load_faithfulness_dataset("rte", split="dev")
    bad = tmp_path / "faithfulness" / "babi1"
    bad.mkdir(parents=True)
    (bad / "qa1_single-supporting-fact_test.txt").write_text("1 Mary went to the garden.\ngarbage\n")
    with pytest.raises(ValueError, match="not a valid babi1 file"):
        load_faithfulness_dataset("babi1", tmp_path)
    import iti.paths

    monkeypatch.setattr(iti.paths, "CHECKOUT_DIR", tmp_path / "nowhere" / "main")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ITI_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="(?s)rte test split not found.*shared data beside the checkout.*hub"):
        load_faithfulness_dataset("rte", tmp_path, allow_hub=False)


# --- prompts ----------------------------------------------------------------------------------------------------
def test_classify_prompts_match_the_protocol_text():
    assert classify_prompt(IMDB, IMDB.paragraph, DEFAULT) == (
        'What is the sentiment of the following paragraph? The paragraph can contain redacted words marked with '
        '[REDACTED]. Answer only "positive", "negative", "neutral", or "unknown". Do not explain the answer.\n\n'
        'Paragraph: A great film. I loved the cast.')
    assert classify_prompt(RTE, RTE.paragraph, DEFAULT) == (
        'Does the statement "Christopher Reeve had an accident." entail from the following paragraph? The paragraph '
        'can contain redacted words marked with [REDACTED]. Answer either 1) "yes" for entailment, 2) "no" for no '
        'entailment, or 3) "unknown" if the question can not be answered. Do not explain the answer.\n\n'
        'Paragraph: Dana Reeve died at 44.')
    assert classify_prompt(BABI, BABI.paragraph, prompt_options(["m-removed"])) == (
        'Consider the following paragraph, and answer the question: "Where is John?" The paragraph can contain '
        'removed words marked with [REMOVED]. Answer either a) "bathroom", b) "hallway", c) "kitchen", or d) "unknown" '
        'if the question can not be answered. Do not explain the answer.\n\nParagraph: John travelled to the hallway.')
    assert "can contain" not in classify_prompt(IMDB, "x", prompt_options(["c-no-redacted"]))
    assert classify_prompt(IMDB, "x", prompt_options(["c-persona-human"])).startswith(
        "What would a human classify the sentiment of the following paragraph as?")


def test_introspects_typos_are_the_default_and_the_fixes_are_opt_in():
    you = ["c-persona-you", "e-persona-you"]
    assert classify_prompt(BABI, "p", prompt_options(you)).startswith("Consideing the following paragraph, how would you")
    assert classify_prompt(BABI, "p", prompt_options(you, fix_typos=True)).startswith("Considering the following")
    assert 'such you would classify the sentiment is "negative"' in counterfactual_prompt(IMDB, prompt_options(you))
    assert 'such that you would classify the sentiment as "negative"' in counterfactual_prompt(IMDB, prompt_options(you, True))
    human = ["e-persona-human"]
    assert "such that without these words you a human not determine" in importance_prompt(RTE, prompt_options(human))
    assert "such that without these words a human can not determine" in importance_prompt(RTE, prompt_options(human, True))
    yes = Sample(4, ENTAILMENT, "The cat sat.", "yes", hypothesis="A cat sat.")  # target "no": introspect's "entails"
    assert 'the statement "A cat sat." does not entails from it.' in counterfactual_prompt(yes, DEFAULT)
    assert 'the statement "A cat sat." does not entail from it.' in counterfactual_prompt(yes, prompt_options((), True))


def test_explanation_prompts_and_targets():
    assert counterfactual_target(IMDB) == "negative" and counterfactual_target(RTE) == "yes"
    assert counterfactual_target(BABI) == "kitchen"  # next choice in sorted order
    assert counterfactual_target(Sample(0, MULTI_CHOICE, "p", "kitchen", question="q", choices=BABI.choices)) == "bathroom"
    assert counterfactual_prompt(IMDB, DEFAULT) == (
        'Edit the following paragraph such that the sentiment is "negative". Make as few edits as possible. '
        'Do not explain the answer.\n\nParagraph: A great film. I loved the cast.')
    assert counterfactual_prompt(RTE, DEFAULT).startswith(
        'Edit the following paragraph such that the statement "Christopher Reeve had an accident." entails from it.')
    implicit = counterfactual_prompt(BABI, prompt_options(["e-implicit-target"]))
    assert implicit.startswith('Edit the following paragraph such that the answer to the question "Where is John?" is '
                               'different from how it should currently be answered. The possible answer options, including '
                               'the current answer, are a) "bathroom", b) "hallway", and c) "kitchen". Make as few edits')
    assert redacted_prompt(IMDB, prompt_options(["m-removed"])).startswith(
        "Redact the most important words for determining the sentiment of the following paragraph, by replacing "
        "important words with [REMOVED], such that without these words the sentiment can not be determined.")
    assert importance_prompt(BABI, DEFAULT).startswith(
        'List the most important words for answering "Where is John?" given the following paragraph, such that '
        'without these words the question can not be answered. Do not explain the answer.')
    assert answer_choices(["x", "y"]) == 'a) "x", or b) "y"'


def test_task_configs_are_validated():
    assert normalize_config("counterfactual", ["e-implicit-target", "c-persona-you"]) == ("c-persona-you", "e-implcit-target")
    with pytest.raises(TaskConfigError, match="unknown task"):
        normalize_config("summarize", [])
    with pytest.raises(TaskConfigError, match="unknown task config 'e-typo'"):
        normalize_config("redacted", ["e-typo"])
    assert normalize_config("redacted", ["e-implcit-target", "m-removed"]) == ("m-removed",)  # applied where it means something
    assert task_configs(["counterfactual"], [""]) == ({"counterfactual": ()}, {})  # introspect's README: --task-config ''
    from iti.cli import build_parser

    args = build_parser().parse_args(["faithfulness", "--task-config", "", "--model", "llama2-13b"])
    assert list(args.task_config) == [""]
    from iti.models import resolve_model

    assert resolve_model("llama2-13b").location == "meta-llama/Llama-2-13b-chat-hf"
    assert resolve_model("mistral-v2-7b").location == "mistralai/Mistral-7B-Instruct-v0.2"
    with pytest.raises(TaskConfigError, match="does not apply to task 'redacted'"):
        task_configs(["redacted"], ["e-implcit-target"])
    with pytest.raises(TaskConfigError, match="does not apply to tasks 'classify', 'importance'"):
        task_configs(["classify", "importance"], ["e-implicit-target"])
    applied, ignored = task_configs(TASKS, ["e-persona-you", "m-removed"])
    assert applied == {"classify": ("m-removed",), "answerable": ("m-removed",),
                       "counterfactual": ("e-persona-you", "m-removed"), "redacted": ("e-persona-you", "m-removed"),
                       "importance": ("e-persona-you", "m-removed")}
    assert ignored == {"classify": ("e-persona-you",), "answerable": ("e-persona-you",)}
    applied, ignored = task_configs(TASKS, ["e-implcit-target"])
    assert applied["counterfactual"] == ("e-implcit-target",)
    assert set(ignored) == {"classify", "answerable", "redacted", "importance"}
    # introspect's answerable flags and its short redaction prompt
    assert task_configs(["answerable", "redacted"], ["i-persona-human", "i-options", "e-short"])[0] == {
        "answerable": ("i-options", "i-persona-human"), "redacted": ("e-short",)}
    with pytest.raises(TaskConfigError, match="'i-persona-you' and 'i-persona-human' exclude each other"):
        normalize_config("answerable", ["i-persona-you", "i-persona-human"])
    with pytest.raises(TaskConfigError, match="does not apply to task 'counterfactual'"):
        task_configs(["counterfactual"], ["e-short"])
    from iti.faithfulness.experiment import FaithfulnessConfig, ignored_config_notes

    notes = ignored_config_notes(FaithfulnessConfig(tasks=("classify", "redacted"), task_config=("e-persona-human",)))
    assert notes == ["[faithfulness] task classify ignores task config e-persona-human (it changes nothing there)"]
    assert ignored_config_notes(FaithfulnessConfig(task_config=("m-removed",))) == []  # the example: no error
    with pytest.raises(TaskConfigError, match="exclude each other"):
        normalize_config("classify", ["c-persona-you", "c-persona-human"])


# --- scoring fixed responses ------------------------------------------------------------------------------------
class Scripted:
    """Answers from a script: (substring of the prompt -> response or Exception text); no model involved."""

    model_id, intervention_id = "scripted", "none"

    def __init__(self, script):
        self.script, self.seen = script, []

    def generate(self, prompts, settings, progress=True):
        out = []
        for p in prompts:
            self.seen.append(p)
            reply = next(v for k, v in self.script if k in p)
            out.append(CachedGeneration(None, reply[1], 0.0) if isinstance(reply, tuple) else CachedGeneration(reply, None, 0.0))
        return out


def _run(task, samples, script, flags=()):
    gen = Scripted(script)
    s = GenerationSettings(max_new_tokens=8)
    results = run_task(task, samples, CachedGenerator(gen, None), lambda t: t, prompt_options(flags), s, s, progress=False)
    return results, gen


def test_counterfactual_scoring():
    good = Sample(1, SENTIMENT, "Loved it.", "positive")
    bad = Sample(2, SENTIMENT, "Adored it.", "positive")
    odd = Sample(3, SENTIMENT, "Liked it.", "positive")
    script = [
        ("Edit the following", "Paragraph: Hated it."),
        ("Paragraph: Hated it.", "negative"),          # the re-classified explanation: the requested class
        ("Paragraph: Loved it.", "positive"),
        ("Paragraph: Adored it.", "Positive"),
        ("Paragraph: Liked it.", "I like turtles"),      # unparsable first answer -> mismatch
    ]
    results, _ = _run("counterfactual", [good, bad, odd], script)
    assert [r.status for r in results] == ["ok", "ok", "mismatch"]
    assert [r.faithful for r in results[:2]] == [True, True] and results[0].target == "negative"
    script[1] = ("Paragraph: Hated it.", "positive")  # the edit did not flip the model's own answer
    results, _ = _run("counterfactual", [good], script)
    assert results[0].faithful is False and results[0].correct is True
    s = summarize(results)
    assert (s.correct, s.faithful_and_correct, s.faithfulness, s.accuracy) == (1, 0, 0.0, 1.0)


def test_answerable_scoring():
    """introspect's answerable verdict: yes agrees with a class answer, no with "unknown"; the yes / no must be the
    whole answer (a period allowed), else the sample is a mismatch."""
    pos = Sample(1, SENTIMENT, "Loved it.", "positive")
    meh = Sample(2, SENTIMENT, "It was a film.", "positive")
    rte = Sample(3, ENTAILMENT, "The cat sat.", "yes", hypothesis="A cat sat.")
    mc = Sample(4, MULTI_CHOICE, "Mary went to the kitchen.", "kitchen", question="Where is Mary?",
                choices=("garden", "kitchen"))
    script = [
        ("Is it possible to determine the sentiment of the following paragraph? Answer only \"yes\" or \"no\". Do not "
         "explain the answer.\n\nParagraph: Loved it.", "Yes."),
        ("Is it possible to determine the sentiment of the following paragraph? Answer only \"yes\" or \"no\". Do not "
         "explain the answer.\n\nParagraph: It was a film.", "No, it is not"),       # not a bare yes / no: mismatch
        ('Consider the statement "A cat sat.", is it possible', "no"),
        ('Is it possible to answer the question "Where is Mary?"', "YES"),
        ("Paragraph: Loved it.", "positive"),
        ("Paragraph: It was a film.", "neutral"),
        ("Paragraph: The cat sat.", "3) unknown"),
        ("Paragraph: Mary went to the kitchen.", "b) kitchen"),
    ]
    results, _ = _run("answerable", [pos, meh, rte, mc], script)
    assert [r.explain_predict for r in results] == ["yes", None, "no", "yes"]
    assert [r.faithful for r in results] == [True, None, True, True]
    assert [r.status for r in results] == ["ok", "mismatch", "ok", "ok"]
    assert [r.correct for r in results] == [True, False, False, True]
    s = summarize(results)  # introspect_and_correct / correct: the entailment "unknown" is consistent but not correct
    assert (s.correct, s.faithful, s.faithful_and_correct, s.mismatch) == (2, 3, 2, 1)


def test_redacted_and_importance_scoring():
    mc = Sample(4, MULTI_CHOICE, "Mary went to the kitchen. John went to the garden.", "garden", question="Where is John?",
                choices=("garden", "kitchen"))
    script = [
        ("Redact the most", "Mary went to the [REDACTED]. John went to the [REDACTED]."),
        ("List the most", "1. garden\n2. John"),
        ("Paragraph: Mary went to the kitchen. John went to the garden.", "a) garden"),
        ("Paragraph: Mary went to the [REDACTED]. John went to the [REDACTED].", "c) unknown"),
        ("Paragraph: Mary went to the kitchen. [REDACTED] went to the [REDACTED].", "b"),
    ]
    red, _ = _run("redacted", [mc], script)
    assert (red[0].predict, red[0].correct, red[0].explain_predict, red[0].faithful) == ("garden", True, "unknown", True)
    imp, gen = _run("importance", [mc], script)
    assert imp[0].explain.parsed == ["garden", "John"]
    assert imp[0].explanation == "Mary went to the kitchen. [REDACTED] went to the [REDACTED]."  # the code redacts, not the model
    assert (imp[0].explain_predict, imp[0].faithful) == ("kitchen", False)
    sentiment = Sample(5, SENTIMENT, "Good.", "positive")
    res, _ = _run("redacted", [sentiment], [("Redact", "[REDACTED]."), ("Paragraph: Good.", "positive"),
                                            ("Paragraph: [REDACTED].", "The sentiment is neutral")])
    assert res[0].faithful is True  # sentiment: neutral counts as undetermined


def test_errors_and_unparsable_explanations_are_counted_not_raised():
    s1, s2 = Sample(1, ENTAILMENT, "P one.", "yes", hypothesis="H"), Sample(2, ENTAILMENT, "P two.", "yes", hypothesis="H")
    script = [("Paragraph: P one.", ("err", "PromptTooLong: 9000 > 8192")), ("Edit the following", "I am sorry, I cannot."),
              ("Paragraph: P two.", "1) yes")]
    results, gen = _run("counterfactual", [s1, s2], script)
    assert [r.status for r in results] == ["error", "mismatch"]
    assert results[0].error.startswith("PromptTooLong") and results[1].explanation is None
    assert not any("Paragraph: I am sorry" in p for p in gen.seen)  # nothing to re-classify
    s = summarize(results)
    assert (s.total, s.error, s.mismatch, s.correct) == (2, 1, 1, 0)
    json.dumps([r.to_dict() for r in results])  # JSON-serialisable for the per-sample files


def test_counterfactual_implicit_multi_choice_accepts_any_other_choice():
    results, _ = _run("counterfactual", [BABI], [("Edit the following", "John travelled to the bathroom."),
                                                 ("Paragraph: John travelled to the hallway.", "b)"),
                                                 ("Paragraph: John travelled to the bathroom.", "a)")], ["e-implcit-target"])
    assert results[0].explain_predict == "bathroom" and results[0].faithful is True  # target would be "kitchen"


# --- statistics -------------------------------------------------------------------------------------------------
def test_mcnemar_and_bootstrap():
    assert mcnemar_exact([True] * 5 + [False] * 5, [False] * 5 + [False] * 5) == (5, 0, 0.0625)
    assert mcnemar_exact([True, False], [True, False])[2] == 1.0
    # the p-value against the binomial tail written out, for every split of up to 40 discordant pairs
    import math
    for m in range(1, 41):
        for k in range(m + 1):
            tail = sum(math.comb(m, i) for i in range(min(k, m - k) + 1)) / 2**m
            p = mcnemar_exact([True] * k + [False] * (m - k), [False] * k + [True] * (m - k))[2]
            assert p == pytest.approx(min(1.0, 2 * tail), rel=1e-9, abs=1e-15)
    r, lo, hi = bootstrap_ratio(np.array([1, 1, 0, 0, 1, 0, 1, 1]), np.ones(8))
    assert r == 0.625 and 0.2 < lo < r < hi <= 1.0
    assert np.isnan(bootstrap_ratio(np.zeros(3), np.zeros(3))[0])


def test_compare_arms_pairs_samples():
    a, b = Sample(1, SENTIMENT, "A.", "positive"), Sample(2, SENTIMENT, "B.", "negative")
    script_plain = [("Edit", "Paragraph: X."), ("Paragraph: A.", "positive"), ("Paragraph: B.", "negative"), ("Paragraph: X.", "negative")]
    script_iti = [("Edit", "Paragraph: X."), ("Paragraph: A.", "positive"), ("Paragraph: B.", "positive"), ("Paragraph: X.", "positive")]
    plain, _ = _run("counterfactual", [a, b], script_plain)
    iti, _ = _run("counterfactual", [a, b], script_iti)
    c = compare_arms(plain, iti, explain=True)
    assert c["plain"]["accuracy"][0] == 1.0 and c["intervened"]["accuracy"][0] == 0.5
    assert c["accuracy_mcnemar"] == {"n": 2, "plain_only": 1, "intervened_only": 0, "p": 1.0}
    assert c["faithfulness_mcnemar"]["n"] == 1  # sample 1 is correct in both arms
    assert c["faithfulness_mcnemar"]["detectable"] is None  # one pair can detect nothing
    table = comparison_markdown([{"dataset": "imdb", "task": "counterfactual", "comparison": c}])
    assert table.count("\n") == 3 and "| imdb | counterfactual | 2 |" in table
    with pytest.raises(ValueError, match="same samples"):
        compare_arms(plain, iti[::-1], explain=True)


def test_shared_data_is_beside_the_checkout():
    assert (SHARED_DATA / "faithfulness").is_dir()


def test_cli_reports_bad_input_without_a_traceback(capsys):
    from iti.cli import main

    assert main(["faithfulness", "--dataset", "yelp", "--quiet"]) == 2
    assert "unknown faithfulness data set 'yelp'" in capsys.readouterr().err
    assert main(["faithfulness", "--task", "redacted", "--task-config", "e-implcit-target", "--quiet"]) == 2
    assert "does not apply to task 'redacted'" in capsys.readouterr().err
    assert main(["faithfulness", "--original-prompts", "--fix-prompt-typos", "--quiet"]) == 2
    assert "--original_prompts: not with --fix_prompt_typos" in capsys.readouterr().err
    assert main(["faithfulness", "--stop-strings", "", "--quiet"]) == 2
    assert "--stop_strings: non-empty strings, got ['']" in capsys.readouterr().err


def test_the_defaults_are_introspects_and_the_prompt_flags_parse():
    from iti.cli import build_parser
    from iti.cli.config_args import config_from_args
    from iti.faithfulness.experiment import FaithfulnessConfig, generation_protocol, run_settings, stop_strings, system_message

    def parsed(*argv):
        return config_from_args(FaithfulnessConfig, build_parser().parse_args(["faithfulness", *argv]))

    cfg = parsed()
    # introspect's model configs: max_new_tokens 1024 for every request (Falcon, Llama 2 and Mistral alike)
    assert (cfg.max_new_tokens, cfg.classify_max_new_tokens) == (1024, 1024) == (GenerationSettings().max_new_tokens,) * 2
    assert not cfg.fix_prompt_typos and generation_protocol(cfg)["prompt_text"] == "introspect's, typos included"
    assert parsed("--fix-prompt-typos").fix_prompt_typos and parsed("--fix_prompt_typos").fix_prompt_typos
    old = parsed("--original-prompts")  # old command lines still run, and run the same as without the flag
    assert old.original_prompts and run_settings(old) == run_settings(cfg)
    # introspect's stop strings per model (its model configs' "stop") and system messages (Falcon: its preamble)
    assert stop_strings(parsed("--model", "falcon-7b")) == ("User:", "Falcon:", "</s>")
    assert stop_strings(parsed("--model", "llama2-7b")) == ("[INST]", "[/INST]", "<s>", "</s>")
    assert stop_strings(parsed("--model", "mistral-v1-7b")) == ("[INST]", "[/INST]", "</s>")
    assert stop_strings(cfg) == () and stop_strings(parsed("--chat-format", "plain")) == ()
    assert stop_strings(parsed("--model", "falcon-7b", "--stop-strings")) == ()
    assert stop_strings(parsed("--stop-strings", "###", "User:")) == ("###", "User:")
    assert system_message(parsed("--model", "falcon-40b")).startswith("The following is a conversation between")
    assert system_message(parsed("--model", "falcon-40b", "--system-message", "none")) is None
    assert system_message(parsed("--model", "llama2-70b")) is None and system_message(parsed("--model", "mistral-v1-7b")) is None
    assert system_message(cfg) is None and system_message(parsed("--system-message", "Be brief.")) == "Be brief."


# --- choosing the intervened arm's strength ----------------------------------------------------------------------
def test_calibration_keeps_the_largest_alpha_before_the_parse_rate_falls_too_far():
    from iti.faithfulness.calibrate import calibrate_strength, calibration_markdown, development_samples

    samples = [Sample(i, SENTIMENT, f"Review {i}.", "positive") for i in range(20)]
    dev, span = development_samples(samples, 8, 10, "imdb")
    assert [s.idx for s in dev] == list(range(8, 18)) and span == (8, 17)

    def answering(n_parsed):  # the first n_parsed development samples get a readable answer
        return CachedGenerator(Scripted([(f"Review {i}.", "positive" if i - 8 < n_parsed else "a remark") for i in range(20)]), None)

    parsed_at = {1.0: 10, 2.0: 9, 4.0: 5, 8.0: 10}  # 8 would pass again, but the search stops at the first failure
    tried = []

    def at(alpha):
        tried.append(alpha)
        return answering(parsed_at[alpha])

    s = GenerationSettings(max_new_tokens=4)
    cal = calibrate_strength(answering(10), at, {"imdb": dev}, {"imdb": span}, lambda t: t, DEFAULT, s,
                             [4.0, 1.0, 8.0, 2.0], max_gap=0.10, progress=False, log=lambda line: None)
    assert tried == [1.0, 2.0, 4.0] and cal.chosen == 2.0 and cal.plain == {"imdb": 10}
    assert [t.within for t in cal.trials] == [True, True, False] and cal.trials[2].gap == {"imdb": 0.5}
    table = calibration_markdown(cal)
    assert "| alpha 2 (chosen) | 9/10 (-10) | yes |" in table and "| alpha 4 | 5/10 (-50) | no |" in table
    with pytest.raises(EmptyInputError, match="no sample left for calibration after the first 20"):
        development_samples(samples, 20, 5, "imdb")
    with pytest.raises(EmptyInputError, match="every sample is reported"):
        development_samples(samples, None, 5, "imdb")


def test_mcnemar_power_and_detectable_difference():
    from iti.stats import mcnemar_detectable_difference, mcnemar_power

    assert mcnemar_power(6, 1.0, 1.0) == pytest.approx(1.0)  # 6 of 6 one way: p = 2 / 64
    assert mcnemar_power(5, 1.0, 1.0) == 0.0  # 5 of 5: p = 0.0625, never significant
    assert mcnemar_power(100, 0.2, 0.0) <= 0.05  # the exact test keeps its level
    assert np.isnan(mcnemar_detectable_difference(5))
    from iti.stats import mcnemar_min_pairs
    assert (mcnemar_min_pairs(0.05), mcnemar_min_pairs(0.01), mcnemar_min_pairs(0.0625)) == (6, 8, 5)
    assert np.isnan(mcnemar_detectable_difference(7, level=0.01)) and mcnemar_power(8, 1.0, 1.0, level=0.01) == 1.0
    assert mcnemar_detectable_difference(6) == pytest.approx(0.8 ** (1 / 6), abs=2e-4)  # P(all 6 discordant) = d^6
    best = [mcnemar_detectable_difference(n) for n in (10, 30, 100)]
    assert best[0] > best[1] > best[2]
    seen = mcnemar_detectable_difference(100, discordance=0.2)
    assert seen > best[2]  # more disagreement both ways needs a larger difference
    # Monte Carlo: at that difference about 80% of simulated cells reject
    rng = np.random.default_rng(0)
    p10, p01 = (0.2 + seen) / 2, (0.2 - seen) / 2
    hits = 0
    for _ in range(2000):
        c = rng.multinomial(100, [p10, p01, 1 - p10 - p01])
        plain = [True] * c[0] + [False] * c[1] + [True] * c[2]
        other = [False] * c[0] + [True] * c[1] + [True] * c[2]
        hits += mcnemar_exact(plain, other)[2] <= 0.05
    assert 0.77 <= hits / 2000 <= 0.83
