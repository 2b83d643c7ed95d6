"""Grouped key/value heads handed to torch's SDPA kernel in place on the CPU: the same logits as transformers'
repeat-the-heads path (the model without the hooks), the switch set only inside the model's forwards, restored
after one that raises, and nothing installed where it does not apply."""
import os

import pytest
import torch

from iti.grouped_attention import FLAG, read_grouped_kv_in_place

from ..conftest import make_tiny_model


def _padded_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows, the first left-padded, so that every forward passes a mask (the case the switch is for)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text"])
def test_grouped_heads_in_place_give_the_same_logits_and_the_switch_lives_inside_the_forward(arch, monkeypatch):
    monkeypatch.delenv(FLAG, raising=False)
    model = make_tiny_model(arch)
    batch = _padded_batch(model.config.vocab_size)
    with torch.no_grad():
        copied = model(**batch).logits  # transformers' path: every key/value head repeated for its query heads
    seen = []
    attn = next(m for name, m in model.named_modules() if name.endswith("self_attn"))
    attn.register_forward_pre_hook(lambda module, args: seen.append(os.environ.get(FLAG)))
    handle = read_grouped_kv_in_place(model)
    assert handle is not None
    with torch.no_grad():
        in_place = model(**batch).logits
    assert seen == ["1"] and FLAG not in os.environ
    torch.testing.assert_close(in_place, copied, rtol=0, atol=1e-5)
    handle.remove()
    with torch.no_grad():
        model(**batch)
    assert seen == ["1", None]  # removed: transformers' own path again


def test_the_switch_is_restored_after_a_forward_that_raises(monkeypatch):
    monkeypatch.setenv(FLAG, "0")  # a value the user set is put back, not deleted
    model = make_tiny_model("llama")
    read_grouped_kv_in_place(model)

    def boom(module, args):
        assert os.environ[FLAG] == "1"
        raise RuntimeError("boom")

    model.model.layers[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert os.environ[FLAG] == "0"


def test_nothing_is_installed_where_it_does_not_apply():
    assert read_grouped_kv_in_place(make_tiny_model("gpt2")) is None  # as many key/value heads as query heads
    eager = make_tiny_model("gemma2")  # eager attention: no SDPA call to change
    assert eager.config._attn_implementation == "eager" and read_grouped_kv_in_place(eager) is None
    meta = make_tiny_model("llama").to("meta")  # a model not on the CPU (CUDA's masked GQA is the slow kernel)
    assert read_grouped_kv_in_place(meta) is None
