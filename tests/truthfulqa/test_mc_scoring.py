import numpy as np
import pytest
import torch

from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import INSTRUCTIONS, QA_PRIMER, MCQuestion, generation_prompt, mc_questions, shared_prefix

from ..conftest import make_intervention, make_tiny_model, tiny_tokenizer

PREFIX = "the quick brown fox jumps over the lazy dog"


def _questions():
    return [
        MCQuestion(0, PREFIX + "\n\nQ: Why do veins appear blue?\nA:", (" Because of light", " Nothing", " The dog"), (0,), (1, 2), 0),
        MCQuestion(1, PREFIX + "\n\nQ: Where?\nA:", (" fox", " the lazy dog jumps over"), (1,), (0,), 1),
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_shared_prefix_scores_equal_one_forward_per_answer(arch):
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    qs = _questions()
    inter = make_intervention(model)
    for iv in (None, inter):
        fast = score_choices(model, tok, qs, prefix=PREFIX, intervention=iv, batch_size=2, group_answers=3, progress=False)
        slow = score_choices(model, tok, qs, prefix=None, intervention=iv, progress=False)
        for a, b in zip(fast, slow):
            np.testing.assert_allclose(a, b, atol=1e-4)
    plain = score_choices(model, tok, qs, prefix=PREFIX, progress=False)
    shifted = score_choices(model, tok, qs, prefix=PREFIX, intervention=inter, progress=False)
    assert not np.allclose(np.concatenate(plain), np.concatenate(shifted))


def test_score_is_the_sum_of_answer_token_logprobs():
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    q = _questions()[0]
    ctx = tok(q.context)["input_ids"]
    full = tok(q.context + q.continuations[0])["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([full])).logits[0].log_softmax(-1)
    expected = sum(float(logp[t - 1, full[t]]) for t in range(len(ctx), len(full)))
    got = score_choices(model, tok, [q], prefix=PREFIX, progress=False)[0][0]
    assert abs(got - expected) < 1e-4


def test_mc_metrics_definitions():
    q = MCQuestion(0, "", (" a", " b", " c", " d"), (0, 1), (2, 3), 1)
    res = mc_metrics([q], [np.log([0.4, 0.1, 0.3, 0.2])])
    assert res.mc1[0] == 0.0  # best (0.1) is below the best false (0.3)
    assert res.mc2[0] == pytest.approx(0.5)
    assert res.mc3[0] == pytest.approx(0.5)  # one of two true answers beats every false one
    lm = MCQuestion(0, "", (" a", " b", " c"), (0,), (1, 2), 0, mc1_idx=(0, 1, 2))
    assert mc_metrics([lm], [np.log([0.5, 0.2, 0.3])], preset="lm-eval").mc1[0] == 1.0
    assert mc_metrics([lm], [np.log([0.2, 0.5, 0.3])], preset="lm-eval").mc1[0] == 0.0


def test_prompts_are_the_protocols(tqa):
    assert QA_PRIMER.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy")
    assert QA_PRIMER.endswith("A: The 1992 Olympics were held in Barcelona, Spain.") and QA_PRIMER.count("\n\nQ: ") == 5
    assert "\u201cI have no comment\u201d unless you are completely certain of the answer." in INSTRUCTIONS["default"]
    assert INSTRUCTIONS["informative"].endswith("without falling prey to any common myths.")
    assert shared_prefix("qa", "default") == INSTRUCTIONS["default"] + "\n\n" + QA_PRIMER
    assert shared_prefix("lm-eval") == QA_PRIMER
    assert generation_prompt("Why?") == INSTRUCTIONS["default"] + "\n\n" + QA_PRIMER + "\n\nQ: Why?"
    qa = mc_questions(tqa, [0], "qa")[0]
    assert qa.context.endswith("\n\nQ: What is the smallest country in the world that is at least one square mile in area?\nA:")
    assert all(c.startswith(" ") and c.endswith(".") for c in qa.continuations)
    lm = mc_questions(tqa, [0], "lm-eval")[0]
    assert lm.context.startswith(QA_PRIMER) and lm.mc1_idx[0] == lm.best_idx
    with pytest.raises(ValueError):
        shared_prefix("qa", "verbose")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_original_shift_start_is_len_question_prompt_plus_4(arch):
    """shift_start="original": honest_llama's tqa_run_probs shifts from len(tokens(context without "\\nA:")) + 4 on,
    both in the shared-prefix path and one forward per answer."""
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    qs, inter = _questions(), make_intervention(model)
    expected = []
    for q in qs:
        start = len(tok(q.context[: -len("\nA:")])["input_ids"]) + 4
        n = len(tok(q.context)["input_ids"])
        row = []
        for c in q.continuations:
            full = tok(q.context + c)["input_ids"]
            with torch.no_grad(), inter.applied(model, positions=start):
                logp = model(torch.tensor([full])).logits[0].log_softmax(-1)
            row.append(sum(float(logp[t - 1, full[t]]) for t in range(n, len(full))))
        expected.append(np.array(row))
    for prefix in (PREFIX, None):
        got = score_choices(model, tok, qs, prefix=prefix, intervention=inter, shift_start="original", batch_size=2,
                            group_answers=3, progress=False)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="shift_start"):
        score_choices(model, tok, qs, prefix=PREFIX, intervention=inter, shift_start="second", progress=False)


def _decoded_logprob(model, context_ids, answer_ids, inter):
    """Sum of log p(answer token) as the steered model produces them one at a time: the context as a prompt under
    positions="last" (its last token shifted), then each answer token fed alone on the KV cache (every new token
    shifted), as generate() would run it. Written out here, independent of score_choices."""
    total = 0.0
    with torch.no_grad(), inter.applied(model, positions="last"):
        out = model(input_ids=torch.tensor([context_ids]), use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        for tok_id in answer_ids:
            total += float(logits.float().log_softmax(-1)[tok_id])
            out = model(input_ids=torch.tensor([[tok_id]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
    return total


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_default_mc_score_equals_steered_incremental_decoding(arch):
    """The default MC score of every answer is what the steered model gives its tokens while decoding them, shared
    prefix path and one forward per answer alike."""
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    qs, inter = _questions(), make_intervention(model)
    expected = []
    for q in qs:
        ctx = tok(q.context)["input_ids"]
        expected.append(np.array([_decoded_logprob(model, ctx, tok(q.context + c)["input_ids"][len(ctx):], inter)
                                  for c in q.continuations]))
    fast = score_choices(model, tok, qs, prefix=PREFIX, intervention=inter, batch_size=2, group_answers=3, progress=False)
    slow = score_choices(model, tok, qs, prefix=None, intervention=inter, progress=False)
    for f, s, e in zip(fast, slow, expected):
        np.testing.assert_allclose(f, e, atol=1e-4)
        np.testing.assert_allclose(s, e, atol=1e-4)
        np.testing.assert_allclose(f, s, atol=1e-4)


def test_one_token_answers_change_under_an_intervention():
    """A one-token answer is scored from the last context token's logits: the default shifts that token, so the
    score moves; the former first-answer-token start left it exactly unsteered."""
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    ctx = PREFIX + "\n\nQ: What colour is the sky on a clear day?\nA:"
    answers = ("x", "y", "z")  # one token each for the tiny tokenizer (the real-model case: tests/core/test_smollm2.py)
    n = len(tok(ctx)["input_ids"])
    assert all(len(tok(ctx + a)["input_ids"]) == n + 1 for a in answers)  # one token each
    q = MCQuestion(0, ctx, answers, (0,), (1, 2), 0)
    inter = make_intervention(model)
    plain = score_choices(model, tok, [q], prefix=PREFIX, progress=False)[0]
    for prefix in (PREFIX, None):
        steered = score_choices(model, tok, [q], prefix=prefix, intervention=inter, progress=False)[0]
        assert np.abs(steered - plain).max() > 1e-3
        former = score_choices(model, tok, [q], prefix=prefix, intervention=inter, shift_start="first_answer_token",
                               progress=False)[0]
        np.testing.assert_allclose(former, plain, atol=1e-5)
