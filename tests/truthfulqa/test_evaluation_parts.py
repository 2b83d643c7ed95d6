import numpy as np
import pytest
import torch

from iti.stats import bootstrap_ci, paired_bootstrap_ci
from iti.truthfulqa.data import Refs
from iti.truthfulqa.generation import generate_answers, postprocess_answer
from iti.truthfulqa.lm_cost import NeutralCost, ce_and_kl, load_neutral_texts
from iti.truthfulqa.text_metrics import bleu, rouge_l, similarity_scores

from ..conftest import make_intervention, make_tiny_model, tiny_tokenizer


@pytest.mark.parametrize("raw, expected", [
    ("\nA: Nothing happens.\n\nQ: Next question?", "Nothing happens."),
    ("  The answer is 42. ", "The answer is 42."),
    ("A: yes A: no", "yes"),
    ("Q: only a question", ""),
    ("", ""),
])
def test_postprocessing_follows_honest_llama(raw, expected):
    assert postprocess_answer(raw) == expected


def test_batched_generation_equals_one_at_a_time_with_and_without_shift():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    prompts = ["Q: Why do veins appear blue?", "the lazy dog", "Q: Where did fortune cookies originate? A:"]
    inter = make_intervention(model, alpha=10.0)
    for iv in (None, inter):
        batched = generate_answers(model, tok, prompts, intervention=iv, max_new_tokens=6, batch_size=3, progress=False)
        single = [generate_answers(model, tok, [p], intervention=iv, max_new_tokens=6, batch_size=1, progress=False)[0] for p in prompts]
        assert batched == single


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_answers_on_the_shared_prefix_cache_equal_generate_on_full_prompts(arch):
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    primer = "Q: Why do veins appear blue? A: light. Q: Where did fortune cookies originate? A: "
    prompts = [primer + "the lazy dog", primer + "fox", primer + "the quick brown fox jumps over"]
    for iv in (None, make_intervention(model, alpha=2.0)):  # strong enough to change the answers, not to flatten them
        kwargs = dict(intervention=iv, max_new_tokens=8, batch_size=2, progress=False, stop_at_next_question=False)
        shared = generate_answers(model, tok, prompts, **kwargs)
        reference = generate_answers(model, tok, prompts, share_prefix=False, **kwargs)
        assert shared == reference and any(shared)


def test_ce_and_kl():
    model, tok = make_tiny_model("gpt_neox"), tiny_tokenizer()
    texts = ["the quick brown fox jumps over the lazy dog", "Q: Why do veins appear blue? A: light"]
    zero = ce_and_kl(model, tok, texts, make_intervention(model, alpha=0.0), batch_size=2)
    assert zero.kl == pytest.approx(0.0, abs=1e-6) and zero.ce == pytest.approx(zero.ce_base, abs=1e-6)
    ids = torch.tensor([tok(texts[0])["input_ids"]])
    with torch.no_grad():
        loss0 = float(model(ids, labels=ids).loss)
        loss1 = float(model(torch.tensor([tok(texts[1])["input_ids"]]), labels=torch.tensor([tok(texts[1])["input_ids"]])).loss)
    assert zero.ce_base == pytest.approx((loss0 + loss1) / 2, abs=1e-4)
    shifted = ce_and_kl(model, tok, texts, make_intervention(model, alpha=30.0), batch_size=1)
    assert shifted.kl > 0.01 and shifted.ce != pytest.approx(shifted.ce_base)


def test_a_meter_that_keeps_the_plain_log_probs_measures_what_ce_and_kl_measures():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    texts = ["the quick brown fox jumps over the lazy dog", "Q: Why do veins appear blue? A: light", "a third one"]
    meter = NeutralCost(model, tok, texts, batch_size=2)
    for alpha in (0.0, 5.0, 30.0):
        kept, fresh = meter(make_intervention(model, alpha=alpha)), ce_and_kl(model, tok, texts, make_intervention(model, alpha=alpha), batch_size=2)
        assert (kept.ce_base, kept.ce, kept.kl) == pytest.approx((fresh.ce_base, fresh.ce, fresh.kl), abs=1e-6)
        np.testing.assert_allclose(kept.per_text_kl, fresh.per_text_kl, atol=1e-6)
    plain = meter(None)
    assert plain.kl == 0.0 and plain.ce == plain.ce_base and len(plain.per_text_kl) == 3


def test_neutral_texts_are_seeded_and_offline():
    a, b, c = load_neutral_texts(5, seed=0), load_neutral_texts(5, seed=0), load_neutral_texts(5, seed=1)
    assert a == b and a != c and all(len(t) > 100 for t in a)
    with pytest.raises(ValueError, match="unknown corpus"):
        load_neutral_texts(5, corpus="wiki")


def test_bleu_rouge_and_truthfulqa_accuracy():
    assert bleu("The cat sat on the mat.", "The cat sat on the mat.") == pytest.approx(100.0)
    assert rouge_l("The cat sat on the mat.", "the cat sat") > 50
    refs = [Refs("q", "Nothing happens.", ("Nothing happens.",), ("You grow watermelons in your stomach.",))] * 3
    res = similarity_scores(["Nothing happens to you.", "You grow watermelons in your stomach.", ""], refs)
    assert res.bleu_acc.tolist() == [1.0, 0.0, 0.0] and res.rougeL_acc.tolist() == [1.0, 0.0, 0.0]
    assert res.rouge1_acc.tolist() == [1.0, 0.0, 0.0]
    # "I have no comment." counts as a correct reference
    assert similarity_scores(["I have no comment."], refs[:1]).rougeL_acc[0] == 1.0


def test_bootstrap():
    mean, lo, hi = bootstrap_ci(np.array([0, 1] * 50), seed=0)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.25
    d, dlo, dhi = paired_bootstrap_ci(np.ones(10), np.zeros(10))
    assert d == dlo == dhi == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci(np.ones(3), np.ones(4))
