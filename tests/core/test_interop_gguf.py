"""GGUF: a baked model written for llama.cpp (attn_output.bias) reads back with its bias and the baked model's
logits; transformers' own GGUF loader drops that bias; a baked GGUF imports as the intervention baked into it."""
import copy

import numpy as np
import pytest
import torch

from iti.bake import bake
from iti.errors import GgufModelMismatchError, InexpressibleExportError, OutputExistsError
from iti.interop.gguf_format import export_gguf, import_gguf, load_gguf_model

from ..conftest import make_intervention, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids

gguf = pytest.importorskip("gguf")


def _baked(arch="llama", seed=0):
    model = make_tiny_model(arch, seed=seed)
    inter = make_intervention(model, alpha=5.0)
    return model, inter, bake(copy.deepcopy(model), inter)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_gguf_reads_back_with_the_baked_logits(arch, tmp_path):
    model, inter, baked = _baked(arch)
    path = export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf")
    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert {f"blk.{l}.attn_output.bias" for l in inter.layer_shifts()} <= names
    assert reader.fields["general.architecture"].contents() == "llama"
    ids = _ids("Q: What happens if you eat watermelon seeds?")
    with torch.no_grad():
        torch.testing.assert_close(load_gguf_model(path)(ids).logits, baked(ids).logits, rtol=0, atol=1e-5)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(load_gguf_model(path).generate(ids, **kw), baked.generate(ids, **kw))


def test_f16_gguf_is_close_to_the_baked_model(tmp_path):
    _, _, baked = _baked()
    path = export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf", dtype="f16")
    ids = _ids()
    with torch.no_grad():
        diff = (load_gguf_model(path)(ids).logits - baked(ids).logits).abs().max().item()
    assert diff < 1e-2


def test_transformers_gguf_loader_drops_the_bias(tmp_path):
    """What the module docstring says: stock transformers reads no attention_bias from GGUF metadata, so it loads
    the unbaked model; load_gguf_model keeps the bias."""
    from transformers import AutoModelForCausalLM

    model, _, baked = _baked()
    export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf")
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="baked.gguf")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
        assert not torch.allclose(stock(ids).logits, baked(ids).logits, atol=1e-2)


def test_a_baked_gguf_imports_as_its_intervention(tmp_path):
    model, inter, baked = _baked()
    back = import_gguf(export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf"), model)
    assert back.heads == inter.heads
    for layer, vec in inter.layer_shifts().items():
        np.testing.assert_allclose(back.layer_shifts()[layer], vec, atol=1e-4)


def test_a_gguf_of_another_model_is_refused(tmp_path):
    _, _, baked = _baked()
    path = export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf")
    with pytest.raises(GgufModelMismatchError, match="another model"):
        import_gguf(path, make_tiny_model("llama", seed=1))  # same shapes, other weights
    with pytest.raises(GgufModelMismatchError, match="another model"):
        import_gguf(path, make_tiny_model("qwen2"))


def test_architectures_llama_cpp_llama_cannot_express_are_refused_before_writing(tmp_path):
    for arch in ("gpt2", "gemma", "falcon"):
        model = make_tiny_model(arch)
        with pytest.raises(InexpressibleExportError, match="llama architecture"):
            export_gguf(model, tiny_tokenizer(), tmp_path / f"{arch}.gguf")
    model = make_tiny_model("llama")
    model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(InexpressibleExportError, match="rope type 'linear'"):
        export_gguf(model, tiny_tokenizer(), tmp_path / "linear.gguf")
    assert not list(tmp_path.iterdir())


def test_an_existing_gguf_is_refused_unless_forced(tmp_path):
    _, _, baked = _baked()
    export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf")
    with pytest.raises(OutputExistsError):
        export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf")
    export_gguf(baked, tiny_tokenizer(), tmp_path / "baked.gguf", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["baked.gguf"]


@pytest.mark.slow
def test_smollm2_baked_gguf_matches_the_baked_model(smollm2, tmp_path):
    from benchmarks.bench_intervention_generation import seeded_intervention

    model, tok = smollm2
    inter = seeded_intervention(model, num_heads=16, alpha=3.0)
    baked = bake(copy.deepcopy(model), inter)
    ids = tok("Q: What happens if you crack your knuckles a lot?\nA:", return_tensors="pt")["input_ids"]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        want, want_tokens = baked(ids).logits, baked.generate(ids, **kw)
        f32 = load_gguf_model(export_gguf(baked, tok, tmp_path / "f32.gguf", tokenizer_pre="smollm"))
        torch.testing.assert_close(f32(ids).logits, want, rtol=0, atol=1e-4)
        assert torch.equal(f32.generate(ids, **kw), want_tokens)
        del f32
        f16 = load_gguf_model(export_gguf(baked, tok, tmp_path / "f16.gguf", dtype="f16", tokenizer_pre="smollm"))
        assert (f16(ids).logits - want).abs().max().item() < 0.5  # f16 weights: measured 0.1-0.2
    back = import_gguf(tmp_path / "f16.gguf", model, model_name="smollm2-135m")
    assert back.heads == inter.heads
