"""The public steering API: one fitting recipe (fit_intervention), steering from contrast pairs, and arithmetic
on interventions."""
import numpy as np
import pytest
import torch

import iti
from iti import Intervention, fit_intervention, model_layout
from iti.directions import projection_stds, random_directions, top_heads, unit
from iti.errors import GeometryMismatchError, HeadIndexError

from ..conftest import TEXTS, make_intervention, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids
from ..honest_llama_steps import mass_mean_directions, random_heads


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama"), tiny_tokenizer()


def _planted(n=120, seed=0):
    """Activations [N, 3, 4, 8] where heads (1, 2) and (2, 0) separate the labels along a known direction."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3, 4, 8)).astype(np.float32)
    y = np.arange(n) % 2
    X[y == 1, 1, 2, 0] += 3.0
    X[y == 1, 2, 0, 5] -= 3.0
    return X, y, np.arange(n) // 2  # pairs share a group


def test_fit_intervention_is_the_documented_recipe():
    X, y, groups = _planted()
    inter = fit_intervention(X, y, groups, num_heads=2, alpha=4.0, seed=3)
    assert inter.heads == [(1, 2), (2, 0)] and inter.alpha == 4.0
    expected = unit(mass_mean_directions(X, y, inter.heads))  # by hand: mass-mean, unit, std of the projections
    np.testing.assert_allclose(inter.directions, expected, atol=1e-6)
    np.testing.assert_allclose(inter.stds, projection_stds(X, inter.heads, expected), rtol=1e-5)
    assert fit_intervention(X, y, groups, num_heads=2, alpha=4.0, seed=3).fingerprint() == inter.fingerprint()  # seeded
    g = inter.geometry
    rand = fit_intervention(X, y, groups, num_heads=3, method="random", selector="random", seed=5)
    assert rand.heads == random_heads(g, 3, 5)
    np.testing.assert_allclose(rand.directions, unit(random_directions(3, 8, 5)), atol=1e-6)
    explicit = fit_intervention(X, y, selector=[(0, 1), (2, 3)], std_from=X[:10])
    assert explicit.heads == [(0, 1), (2, 3)]
    np.testing.assert_allclose(explicit.stds, projection_stds(X[:10], explicit.heads, explicit.directions), rtol=1e-5)
    with pytest.raises(iti.errors.InvalidOptionError, match="--method"):
        fit_intervention(X, y, method="pca")
    with pytest.raises(HeadIndexError):
        fit_intervention(X, y, head_choice=[(5, 0)])


def test_truthfulqa_folds_use_the_same_recipe(tiny, tmp_path):
    """build_intervention (the fold code) gives what the pre-refactor formulas give, bit for bit."""
    from iti import build_prompt_set, load_features, write_features
    from iti.probes import HeadProbes, split_questions
    from iti.truthfulqa.fit import build_intervention, train_fold_probes

    model, tok = tiny
    for name in ("tqa_mc2", "tqa_gen_end_q"):
        write_features(model, tok, build_prompt_set(name, max_questions=12), tmp_path, model_name="tiny", progress=False)
    fs, tune = load_features(tmp_path / "tiny_tqa_mc2", mmap=False), load_features(tmp_path / "tiny_tqa_gen_end_q", mmap=False)
    train_q = np.arange(6, 12)
    fold = train_fold_probes(fs, train_q, seed=1)
    tr, va = split_questions(train_q, 0.2, 1)  # the old fold code, written out
    X = np.asarray(fs.head_wise, dtype=np.float32)
    acc = HeadProbes().fit(X[np.isin(fs.question_ids, tr)], fs.labels[np.isin(fs.question_ids, tr)]).score(
        X[np.isin(fs.question_ids, va)], fs.labels[np.isin(fs.question_ids, va)])
    np.testing.assert_array_equal(fold.accuracies, acc)
    for direction, heads in (("mass_mean", "top"), ("probe", "top"), ("random", "top"), ("mass_mean", "random")):
        inter = build_intervention(fs, tune, fold, num_heads=4, alpha=7.0, model_name="tiny", method=direction,
                                   selector="probe_accuracy" if heads == "top" else "random", seed=2)
        chosen = top_heads(acc, 4) if heads == "top" else random_heads(fs.geometry, 4, 2)
        rows = np.isin(fs.question_ids, np.r_[tr, va])
        raw = {"mass_mean": lambda: mass_mean_directions(fs.head_wise[rows], fs.labels[rows], chosen),
               "probe": lambda: np.stack([fold.probes.coef_[l, h] for l, h in chosen]),
               "random": lambda: random_directions(4, fs.geometry.head_dim, 2)}[direction]()
        d = unit(raw)
        s = projection_stds(tune.head_wise[np.isin(tune.question_ids, np.r_[tr, va])], chosen, d)
        expected = Intervention(chosen, d, s, 7.0, "tiny", fs.geometry)
        assert inter.fingerprint() == expected.fingerprint(), (direction, heads)
        assert inter.meta["method"] == direction and inter.meta["train_questions"] == len(train_q)


def test_from_contrast_pairs_steers_toward_the_examples(tiny):
    model, tok = tiny
    positive = [f"{t} yes good" for t in TEXTS] * 3
    negative = [f"{t} no bad" for t in TEXTS] * 3
    inter = Intervention.from_contrast_pairs(model, tok, positive, negative, num_heads=3, alpha=5.0, seed=0)
    again = Intervention.from_contrast_pairs(model, tok, positive, negative, num_heads=3, alpha=5.0, seed=0)
    assert len(inter.heads) == 3 and inter.fingerprint() == again.fingerprint() and inter.meta["pairs"] == 12
    assert inter.geometry == model_layout(model).geometry
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            steered = model(ids).logits
    assert (steered - base).abs().max() > 1e-3
    with pytest.raises(iti.errors.EmptyInputError):
        Intervention.from_contrast_pairs(model, tok, [], negative)


def test_arithmetic_composes_like_applying_both(tiny):
    model, _ = tiny
    a = make_intervention(model, alpha=6.0, heads=((0, 1), (2, 3)), seed=1)
    b = make_intervention(model, alpha=4.0, heads=((2, 3), (1, 0)), seed=2)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with a.applied(model, positions="all"), b.applied(model, positions="all"):
            both = model(ids).logits
        with (a + b).applied(model, positions="all"):
            summed = model(ids).logits
        with a.applied(model, positions="all"), (-a).applied(model, positions="all"):
            undone = model(ids).logits
        with (2.5 * a).applied(model, positions="all"):
            scaled = model(ids).logits
        with a.with_alpha(15.0).applied(model, positions="all"):
            reference = model(ids).logits
    assert (a + b).heads == [(0, 1), (1, 0), (2, 3)]
    torch.testing.assert_close(summed, both, rtol=0, atol=1e-5)
    torch.testing.assert_close(undone, base, rtol=0, atol=1e-5)
    torch.testing.assert_close(scaled, reference, rtol=0, atol=1e-5)
    assert (-1 * a).fingerprint() == (-a).fingerprint() and (-a).alpha == a.alpha
    with pytest.raises(HeadIndexError, match="every shift cancelled"):
        a - a
    other = make_intervention(make_tiny_model("mistral"), heads=((0, 1),))
    other.geometry = type(other.geometry)(**{**other.geometry.to_dict(), "num_kv_heads": 1})
    with pytest.raises(GeometryMismatchError):
        a + other


def test_from_contrast_pairs_refuses_a_bare_string_before_collecting():
    """A str is a sequence of characters: "I love this" used to become 11 one-letter positive prompts."""
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    for pos, neg, arg, shown in (("I love this", ["I hate this"], "positive_prompts", "'I love this'"),
                                 (["I love this"], b"I hate this", "negative_prompts", "b'I hate this'"),
                                 ("x" * 70, "y", "positive_prompts", repr("x" * 60) + "...")):
        with pytest.raises(iti.errors.InvalidOptionError) as e:
            Intervention.from_contrast_pairs(model, tok, pos, neg, num_heads=1)
        assert str(e.value) == f"--{arg}: a list of prompts, not one string (wrap a single prompt in a list), got {shown}"
