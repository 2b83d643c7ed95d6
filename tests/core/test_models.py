import pytest
import torch

from iti import load_model
from iti.errors import ModelLoadError, UnknownModelError
from iti.models import HF_NAMES, _dtype_from, resolve_model

from ..conftest import make_tiny_model, tiny_tokenizer


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as err:
        load_model("smollm3-9000")
    assert "smollm2-135m" in str(err.value) and "llama2_chat_7B" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_names_resolve_without_loading(tmp_path):
    assert resolve_model("llama2_chat_7B").location == "meta-llama/Llama-2-7b-chat-hf"
    assert resolve_model("llama3_8B_instruct").location == HF_NAMES["llama3_8B_instruct"]
    assert resolve_model("smollm2-135m").kind == "embedded"
    assert resolve_model("Qwen/Qwen2-0.5B").kind == "hub"
    assert resolve_model(tmp_path).kind == "local"


def test_local_directory_loads_with_identical_logits(tmp_path):
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    ids = torch.tensor([tok("the lazy dog")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tok.pad_token is not None and not loaded.training


def test_unreachable_hub_id_gives_a_clear_error():
    with pytest.raises(ModelLoadError, match="offline"):
        load_model("iti-test/no-such-model")


def test_dtype_names():
    assert _dtype_from("bf16", None) is torch.bfloat16
    assert _dtype_from(None, None) is torch.float32
    assert _dtype_from(torch.float16, None) is torch.float16
    with pytest.raises(ValueError, match="--dtype: one of auto, float32, float16, bfloat16"):
        _dtype_from("float13", None)


def test_introspect_short_names_resolve_in_load_model(tmp_path, monkeypatch):
    """``load_model("falcon-7b")`` loads what the name stands for (here pointed at a local tiny Falcon, offline)."""
    from iti import model_layout
    from iti.faithfulness.models import INTROSPECT_NAMES
    from iti.models import REGISTERED_NAMES, known_model_names

    assert {"falcon-7b", "falcon-40b", "llama2-7b", "llama2-70b", "mistral-v1-7b"} <= set(known_model_names())
    make_tiny_model("falcon").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    assert REGISTERED_NAMES["falcon-7b"] == INTROSPECT_NAMES["falcon-7b"]  # registered by the faithfulness wing
    monkeypatch.setitem(REGISTERED_NAMES, "falcon-7b", str(tmp_path))
    model, tok = load_model("falcon-7b")
    assert model.config.model_type == "falcon" and model_layout(model).geometry.num_kv_heads == 1
    assert tok.padding_side == "left"


def test_complete_checkpoint_check_refuses_what_a_serving_engine_would_misread(tmp_path):
    """safetensors' save_model keeps one name per shared tensor (lm_head.weight for tied embeddings), and a config
    without ``architectures`` made vLLM load the bare backbone; both are refused, a save_pretrained one passes."""
    import json

    from safetensors.torch import save_model

    from iti.models import check_complete_checkpoint

    model = make_tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    good = tmp_path / "good"
    model.save_pretrained(good)
    check_complete_checkpoint(good, model)

    partial = tmp_path / "partial"
    partial.mkdir()
    model.config.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="lacks 1 weights .*embed_tokens"):
        check_complete_checkpoint(partial, model)

    config = json.loads((good / "config.json").read_text())
    del config["architectures"]
    (good / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="names no architectures"):
        check_complete_checkpoint(good, model)
