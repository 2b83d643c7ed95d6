import pytest
import torch
from transformers import AutoModelForCausalLM

from iti.bake import bake, save_baked
from iti.errors import UnsupportedArchitectureError

from ..conftest import ARCHS, make_tiny_model, tiny_tokenizer
from .test_intervention import _ids, make_intervention

BAKEABLE = ARCHS  # every supported architecture; Mistral and Qwen2 are saved as Llama checkpoints


@pytest.mark.parametrize("arch", BAKEABLE)
def test_baked_logits_equal_runtime_all_positions(arch):
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            runtime = model(ids).logits
        bake(model, inter)
        baked = model(ids).logits
    assert not torch.allclose(runtime, base, atol=1e-3)
    torch.testing.assert_close(baked, runtime, rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "falcon", "falcon_new"])
def test_baked_model_reloads_with_stock_transformers(arch, tmp_path):
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    bake(model, inter)
    save_baked(model, tiny_tokenizer(), tmp_path, inter)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "iti_intervention" / "intervention.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_zero_alpha_bake_changes_nothing():
    model = make_tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        bake(model, make_intervention(model, alpha=0.0))
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_mistral_and_qwen2_are_saved_as_llama_checkpoints_equal_to_the_runtime_intervention(arch, tmp_path):
    """The saved checkpoint is a stock LlamaForCausalLM with attention biases (Qwen2's q/k/v biases kept, zeros
    where there were none); loaded with AutoModelForCausalLM it equals the runtime intervention at every position."""
    import json

    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            runtime = model(ids).logits
    qkv_bias = {n: p.clone() for n, p in model.named_parameters() if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    save_baked(bake(model, inter), tiny_tokenizer(), tmp_path, inter)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["architectures"] == ["LlamaForCausalLM"] and saved["attention_bias"] is True
    assert "sliding_window" not in saved and saved["iti_baked"] == [inter.fingerprint()]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    params = dict(reloaded.named_parameters())
    if arch == "qwen2":
        assert qkv_bias and all(torch.equal(params[n], p) for n, p in qkv_bias.items())
    else:
        assert all(torch.count_nonzero(p) == 0 for n, p in params.items() if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")))
    with torch.no_grad():
        logits = reloaded(ids).logits
    assert not torch.allclose(runtime, base, atol=1e-3)
    torch.testing.assert_close(logits, runtime, rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_a_zero_alpha_llama_checkpoint_of_mistral_and_qwen2_equals_the_original(arch, tmp_path):
    model = make_tiny_model(arch)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
    inter = make_intervention(model, alpha=0.0)
    save_baked(bake(model, inter), tiny_tokenizer(), tmp_path, inter)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, base, rtol=0, atol=1e-4)


def test_a_mistral_with_an_active_sliding_window_is_refused_with_the_reason():
    import transformers as tf

    from ..conftest import tiny_config

    config = tiny_config("mistral")
    config.sliding_window = 16  # < max_position_embeddings (512): a Llama checkpoint would attend further back
    torch.manual_seed(0)
    model = tf.MistralForCausalLM(config).eval()
    with pytest.raises(UnsupportedArchitectureError, match=r"sliding window \(16 tokens\) is active within its context \(512"):
        bake(model, make_intervention(model))
    assert all(p is None for p in (model.model.layers[0].self_attn.o_proj.bias,))  # refused before any change
    config.sliding_window = 512  # a window as long as the context is never used: bakeable
    bake(model, make_intervention(model))


def test_a_qwen2_with_sliding_layers_is_refused_with_the_reason():
    import transformers as tf

    from ..conftest import _common
    from ..conftest import tiny_tokenizer as tok

    config = tf.Qwen2Config(**_common(len(tok())), num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                            max_window_layers=1)
    model = tf.Qwen2ForCausalLM(config).eval()
    with pytest.raises(UnsupportedArchitectureError, match="sliding window"):
        bake(model, make_intervention(model))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_baking_twice_is_refused_unless_adding(arch, tmp_path):
    from iti.errors import ItiError

    model = make_tiny_model(arch)
    inter = make_intervention(model)
    bake(model, inter)
    biases = {n: p.clone() for n, p in model.named_parameters() if n.endswith("bias")}
    with pytest.raises(ItiError) as err:
        bake(model, inter)
    assert inter.fingerprint() in str(err.value) and "add_to_existing" in str(err.value)
    assert all(torch.equal(p, biases[n]) for n, p in model.named_parameters() if n.endswith("bias"))  # unchanged
    # a saved-then-reloaded baked model carries the mark too
    save_baked(model, tiny_tokenizer(), tmp_path, inter)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with pytest.raises(ItiError):
        bake(reloaded, inter)
    # adding on purpose works, and stacks the shift: the same as one bake at twice the alpha
    bake(reloaded, inter, add_to_existing=True)
    once_double = bake(make_tiny_model(arch), inter.with_alpha(2 * inter.alpha))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, once_double(_ids()).logits, rtol=1e-4, atol=1e-4)
    assert list(reloaded.config.iti_baked) == [inter.fingerprint()] * 2


@pytest.mark.parametrize("arch", ["falcon", "falcon_new"])
def test_falcon_bake_switches_config_bias_and_stores_zero_biases_elsewhere(arch):
    """Falcon's config.bias also gives the fused QKV and the MLP biases: baking turns it on and stores those as
    explicit zeros, so only the dense (output projection) bias carries the shift."""
    model = make_tiny_model(arch)
    assert not model.config.bias
    bake(model, make_intervention(model))
    assert model.config.bias is True
    for name, p in model.named_parameters():
        if name.endswith(("query_key_value.bias", "dense_h_to_4h.bias", "dense_4h_to_h.bias")):
            assert torch.count_nonzero(p) == 0, name
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if n.endswith("self_attention.dense.bias"))
