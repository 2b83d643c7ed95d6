"""The real embedded model, SmolLM2-135M-Instruct, on a 20-question subset of TruthfulQA."""
import os
import subprocess
import time

import numpy as np
import pytest
import torch

from iti import load_features, model_layout
from iti.collect import forward_kwargs

from .conftest import REPO

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
