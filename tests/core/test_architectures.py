import pytest
import torch

from iti import model_layout, register_architecture, supported_architectures
from iti.architectures import HeadGeometry
from iti.errors import HeadIndexError, UnsupportedArchitectureError

from ..conftest import ARCHS, make_tiny_model, tiny_config

EXPECTED_KV = {"llama": 2, "mistral": 2, "qwen2": 2, "gemma": 1, "gemma2": 2, "gemma3_text": 1, "gpt2": 4, "gpt_neox": 4,
               "falcon": 1, "falcon_new": 2}
EXPECTED_HEAD_DIM = {"gemma": 16, "gemma2": 16, "gemma3_text": 16}


@pytest.mark.parametrize("arch", ARCHS)
def test_geometry_of_each_architecture(arch):
    model = make_tiny_model(arch)
    layout = model_layout(model)
    g = layout.geometry
    assert (g.num_layers, g.num_heads, g.hidden_size) == (3, 4, 32)
    assert g.num_kv_heads == EXPECTED_KV[arch]
    assert g.head_dim == EXPECTED_HEAD_DIM.get(arch, 8)
    assert len(layout.head_out_paths) == 3
    module = layout.head_out_module(model, 2)
    weight = module.weight
    in_features = weight.shape[0] if arch == "gpt2" else weight.shape[1]  # Conv1D stores [in, out]
    assert in_features == g.num_heads * g.head_dim


def test_gemma_head_out_wider_than_hidden():
    g = model_layout(make_tiny_model("gemma")).geometry
    assert g.head_out_size == 64 and g.hidden_size == 32


def test_unsupported_architecture_names_supported_and_the_function_to_add():
    import transformers as tf

    model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                                           word_embed_proj_dim=16, max_position_embeddings=64))
    with pytest.raises(UnsupportedArchitectureError) as err:
        model_layout(model)
    msg = str(err.value)
    assert "'opt'" in msg and "llama" in msg and "gpt_neox" in msg and "register_architecture" in msg


def test_register_architecture_adds_a_model_type(monkeypatch):
    import transformers as tf

    from iti import architectures

    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                                           word_embed_proj_dim=16, max_position_embeddings=64))
    register_architecture("opt", layers_paths=["model.decoder.layers"], head_out="self_attn.out_proj")
    layout = model_layout(model)
    assert layout.geometry.num_heads == 2 and layout.head_out_paths[1] == "model.decoder.layers.1.self_attn.out_proj"
    assert "opt" in supported_architectures()


def test_model_without_config_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match="no .config"):
        model_layout(torch.nn.Linear(2, 2))


def test_check_head_rejects_out_of_range():
    g = HeadGeometry(num_layers=2, num_heads=3, num_kv_heads=1, head_dim=4, hidden_size=12)
    g.check_head(1, 2)
    for layer, head in [(2, 0), (-1, 0), (0, 3), (0, -1)]:
        with pytest.raises(HeadIndexError):
            g.check_head(layer, head)
    assert HeadGeometry.from_dict(g.to_dict()) == g


def test_multimodal_style_config_uses_text_config():
    from iti.architectures import geometry_from_config

    class Wrapper:
        def get_text_config(self):
            return tiny_config("gemma3_text")

    assert geometry_from_config(Wrapper()).head_dim == 16


def test_a_registered_architecture_is_collectable_steerable_and_bakeable_at_once(monkeypatch):
    """One register_architecture call (OPT: out_proj always has a bias) is all it takes for capture, runtime
    steering and baking; the baked model equals the runtime intervention at every position."""
    import numpy as np
    import transformers as tf

    from iti import architectures, collect_head_activations
    from iti.bake import bake
    from iti.intervention import Intervention

    from ..conftest import tiny_tokenizer

    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                           num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64)).eval()
    spec = register_architecture("opt", layers_paths=["model.decoder.layers"], head_out="self_attn.out_proj", output_bias="always",
                                 context_attrs=["max_position_embeddings"])
    assert spec.bakeable and architectures.context_length(model) == 64
    acts = collect_head_activations(model, tok, ["the quick brown fox", "the lazy dog"], progress=False)
    assert tuple(acts.heads.shape) == (2, 2, 2, 8)
    g = model_layout(model).geometry
    d = np.random.default_rng(0).normal(size=(2, g.head_dim))
    inter = Intervention([(0, 1), (1, 0)], d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(2), 5.0, "opt", g)
    ids = torch.tensor([tok("the quick brown fox")["input_ids"]])
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            runtime = model(ids).logits
        baked = bake(model, inter)(ids).logits
    assert (runtime - base).abs().max() > 1e-3
    torch.testing.assert_close(baked, runtime, rtol=0, atol=1e-5)


def test_an_architecture_without_an_output_bias_is_refused_by_bake_with_the_bakeable_list(monkeypatch):
    from iti import architectures
    from iti.bake import bake
    from iti.intervention import Intervention

    from ..conftest import make_tiny_model

    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    register_architecture("llama", layers_paths=["model.layers"], head_out="self_attn.o_proj", output_bias="none")
    model = make_tiny_model("llama")
    g = model_layout(model).geometry
    inter = Intervention([(0, 0)], [[1.0] + [0.0] * (g.head_dim - 1)], [1.0], 1.0, "tiny", g)
    with pytest.raises(UnsupportedArchitectureError, match="Bakeable: .*gpt2.*mistral, qwen2"):
        bake(model, inter)
