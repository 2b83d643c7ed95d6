"""The real embedded model, SmolLM2-135M-Instruct, on a 20-question subset of TruthfulQA."""
import os
import subprocess
import time

import numpy as np
import pytest
import torch

from iti import load_features, model_layout
from iti.batching import forward_kwargs

from ..conftest import REPO, write_tqa_features

pytestmark = pytest.mark.real


def test_geometry_is_grouped_query_attention(smollm2):
    model, _ = smollm2
    g = model_layout(model).geometry
    assert (g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, g.hidden_size) == (30, 9, 3, 64, 576)


def test_get_activations_sh_collects_a_subset_end_to_end(smollm2, tmp_path):
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", "python3"))
    result = subprocess.run(
        ["bash", str(REPO / "get_activations" / "get_activations.sh"), "--max_questions", "20", "--output_dir", str(tmp_path), "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    mc2 = load_features(tmp_path / "smollm2-135m_tqa_mc2", layer_wise=True)
    end_q = load_features(tmp_path / "smollm2-135m_tqa_gen_end_q")
    assert mc2.head_wise.shape == (153, 30, 9, 64) and mc2.head_wise.dtype == np.float16
    assert mc2.layer_wise.shape == (153, 30, 576)
    assert end_q.head_wise.shape[1:] == (30, 9, 64) and len(end_q) == 154
    assert sorted(set(mc2.question_ids.tolist())) == list(range(20))
    assert int(mc2.labels.sum()) == 61
    assert np.isfinite(mc2.head_wise).all()

    # Rows equal an unpadded one-prompt forward with a raw torch hook on o_proj (up to float16 storage).
    model, tok = smollm2
    from iti import build_prompt_set

    ps = build_prompt_set("tqa_mc2", max_questions=20)
    for row in (0, 77, 152):
        captured = {}
        hooks = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i: captured.__setitem__(i, a[0][0, -1].clone())) for i in range(30)]
        try:
            with torch.no_grad():
                model(**tok(ps.prompts[row], return_tensors="pt"), **forward_kwargs(model))
        finally:
            for h in hooks:
                h.remove()
        reference = torch.stack([captured[i] for i in range(30)]).reshape(30, 9, 64)
        torch.testing.assert_close(torch.from_numpy(np.array(mc2.head_wise[row])).float(), reference, rtol=2e-3, atol=2e-3)


def test_cached_model_reloads_fast(smollm2):
    from iti import load_model

    start = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    assert time.perf_counter() - start < 15
    ids = tok("Q: What is the capital of France? A:", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, smollm2[0](**ids).logits, rtol=0, atol=0)


def test_cache_is_a_complete_standard_checkpoint(smollm2):
    """Every weight under its own name and the architecture in the config, so transformers (and vLLM) load the
    directory as written: no missing, unexpected or re-initialised weight, identical logits."""
    import json

    from transformers import AutoModelForCausalLM

    from iti.models import check_complete_checkpoint, checkpoint_tensor_names, embedded_model_dir

    directory = embedded_model_dir("smollm2-135m")
    model, tok = smollm2
    check_complete_checkpoint(directory, model)
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert "model.embed_tokens.weight" in checkpoint_tensor_names(directory)
    loaded, info = AutoModelForCausalLM.from_pretrained(str(directory), output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = tok("Q: What is the capital of France? A:", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**ids).logits, model(**ids).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_gguf_conversion_matches_the_cache(tmp_path, monkeypatch):
    """De-quantize the GGUF into a fresh cache and compare logits with a direct GGUF load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iti import load_model
    from iti.models import EMBEDDED

    monkeypatch.setenv("ITI_CACHE", str(tmp_path))
    cached, tok = load_model("smollm2-135m")
    gguf = EMBEDDED["smollm2-135m"].gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    direct_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = "Q: Why do veins appear blue? A:"
    assert tok(text)["input_ids"] == direct_tok(text)["input_ids"]
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(cached(**ids).logits, direct(**ids).logits, rtol=0, atol=0)


@pytest.fixture(scope="module")
def smol_features(smollm2, tmp_path_factory):
    """tqa_mc2 and tqa_gen_end_q features of the first 20 questions."""
    return write_tqa_features(*smollm2, tmp_path_factory.mktemp("features"), max_questions=20)


def test_probes_match_sklearn_on_real_features(smol_features):
    from sklearn.linear_model import LogisticRegression

    from iti.probes import HeadProbes, split_questions

    fs = load_features(smol_features / "smollm2-135m_tqa_mc2")
    X = np.asarray(fs.head_wise, dtype=np.float32)
    train, val = split_questions(fs.question_ids, 0.2, seed=42)
    tr, va = np.isin(fs.question_ids, train), np.isin(fs.question_ids, val)
    acc = HeadProbes().fit(X[tr], fs.labels[tr]).score(X[va], fs.labels[va])
    rng = np.random.default_rng(0)
    diffs = []
    for flat in rng.choice(270, size=30, replace=False):
        l, h = divmod(int(flat), 9)
        sk = LogisticRegression(max_iter=1000).fit(X[tr][:, l, h], fs.labels[tr])
        diffs.append(abs(sk.score(X[va][:, l, h], fs.labels[va]) - acc[l, h]))
    assert np.mean(diffs) < 0.01


def test_bake_equals_runtime_on_smollm2(smollm2):
    from iti import load_model
    from iti.bake import bake

    from ..conftest import make_intervention

    model, tok = load_model("smollm2-135m")  # a private copy: baking edits it
    inter = make_intervention(model, alpha=15.0, heads=((3, 1), (14, 6), (14, 4), (29, 8)))
    ids = tok("Q: Why do veins appear blue? A: Because", return_tensors="pt")
    with torch.no_grad():
        base = model(**ids).logits
        with inter.applied(model, positions="all"):
            runtime = model(**ids).logits
        bake(model, inter)
        baked = model(**ids).logits
    assert (runtime - base).abs().max() > 1e-2
    torch.testing.assert_close(baked, runtime, rtol=0, atol=1e-4)


def test_mc_scoring_shared_prefix_equals_full_forward(smollm2, tqa):
    from iti.truthfulqa.mc_scoring import score_choices
    from iti.truthfulqa.prompts import mc_questions, shared_prefix

    model, tok = smollm2
    qs = mc_questions(tqa, [0, 1, 2])
    fast = score_choices(model, tok, qs, prefix=shared_prefix(), progress=False)
    slow = score_choices(model, tok, qs, prefix=None, progress=False)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_mc_scoring_steers_one_token_answers_as_decoding_does(smollm2):
    """The issue's case: " blue" / " green" / " red" are one token each, so their scores come from the last context
    token's logits. With 60 random heads at alpha 20 they move under the default scoring (the former first-answer
    start left them exactly as plain), and each equals the log-prob the steered model gives it when decoding."""
    from iti.intervention import Intervention
    from iti.truthfulqa.mc_scoring import score_choices
    from iti.truthfulqa.prompts import MCQuestion, shared_prefix

    model, tok = smollm2
    g = model_layout(model).geometry
    rng = np.random.default_rng(0)
    flat = rng.choice(g.num_layers * g.num_heads, 60, replace=False)
    heads = [(int(i) // g.num_heads, int(i) % g.num_heads) for i in flat]
    d = rng.normal(size=(60, g.head_dim))
    inter = Intervention(heads, d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(60), 20.0, "smollm2-135m", g)
    ctx = shared_prefix() + "\n\nQ: What colour is the sky on a clear day?\nA:"
    answers = (" blue", " green", " red")
    ctx_ids = tok(ctx)["input_ids"]
    assert all(len(tok(ctx + a)["input_ids"]) == len(ctx_ids) + 1 for a in answers)
    q = MCQuestion(0, ctx, answers, (0,), (1, 2), 0)
    plain = score_choices(model, tok, [q], prefix=shared_prefix(), progress=False)[0]
    former = score_choices(model, tok, [q], prefix=shared_prefix(), intervention=inter, shift_start="first_answer_token",
                           progress=False)[0]
    np.testing.assert_array_equal(former, plain)
    with torch.no_grad(), inter.applied(model, positions="last"):  # the steered model's next-token distribution
        decoded = model(torch.tensor([ctx_ids])).logits[0, -1].float().log_softmax(-1)
    expected = np.array([float(decoded[tok(ctx + a)["input_ids"][-1]]) for a in answers])
    for prefix in (shared_prefix(), None):
        steered = score_choices(model, tok, [q], prefix=prefix, intervention=inter, progress=False)[0]
        np.testing.assert_allclose(steered, expected, atol=1e-4)
    assert np.abs(expected - plain).max() > 0.1


def test_validate_2fold_end_to_end_on_a_subset(smol_features, tmp_path):
    import json

    env = dict(os.environ)
    result = subprocess.run(
        [env.get("PYTHON", "python3"), str(REPO / "validation" / "validate_2fold.py"), "--features_dir", str(smol_features),
         "--max_questions", "8", "--use_center_of_mass", "--num_heads", "8", "--ce_samples", "4", "--max_new_tokens", "8",
         "--sweep_alphas", "5", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = {(r["name"], r["alpha"]) for r in summary["rows"]}
    assert {("baseline", 0.0), ("ITI", 15.0), ("random heads", 15.0), ("random direction", 15.0), ("ITI", 5.0)} <= names
    assert summary["num_questions"] == 8
    iti_row = next(r for r in summary["rows"] if r["name"] == "ITI" and r["alpha"] == 15.0)
    assert 0 <= iti_row["MC2"]["mean"] <= 1 and iti_row["KL"] > 0 and "BLEU-acc" in iti_row
    for f in ("summary.md", "probe_accuracy.png", "alpha_sweep.png", "intervention_fold0/intervention.json"):
        assert (tmp_path / f).exists(), f
    # bake the saved intervention with the CLI and reload it with stock transformers
    baked = tmp_path / "baked"
    result = subprocess.run([env.get("PYTHON", "python3"), str(REPO / "validation" / "edit_weight.py"), "--intervention",
                             str(tmp_path / "intervention_fold0"), "--output_dir", str(baked)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(baked)
    assert reloaded.model.layers[0].self_attn.o_proj.bias is not None
