import einops
import pytest
import torch

from iti import HeadTrace, model_layout, module_hooks
from iti.batching import batch_inputs, pad_token_id
from iti.errors import EmptyInputError, HeadIndexError
from iti.hooks import last_token_index

from ..conftest import make_tiny_model, tiny_tokenizer

PROMPTS = ["Q: Why do veins appear blue? A: Because of light", "the lazy dog"]


def _encode(tok, prompts):
    return [tok(p)["input_ids"] for p in prompts]


def _manual_inputs(model, inputs):
    """The o_proj inputs of every layer, captured with a raw torch hook (the reference)."""
    layout = model_layout(model)
    seen = {}
    handles = [
        model.get_submodule(path).register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
        for i, path in enumerate(layout.head_out_paths)
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_captured_heads_equal_module_input_reshaped_by_hand(tiny):
    arch, model, tok = tiny
    g = model_layout(model).geometry
    inputs = batch_inputs(_encode(tok, PROMPTS), pad_token_id(tok), torch.device("cpu"))
    reference = _manual_inputs(model, inputs)
    with torch.no_grad(), HeadTrace(model, positions="all") as trace:
        model(**inputs)
    for layer in range(g.num_layers):
        by_hand = einops.rearrange(reference[layer], "b s (h d) -> b s h d", h=g.num_heads)
        assert trace.heads[layer].shape == (2, inputs["input_ids"].shape[1], g.num_heads, g.head_dim)
        torch.testing.assert_close(trace.heads[layer], by_hand, rtol=0, atol=0)
    stacked = trace.stacked_heads()
    assert stacked.shape == (2, inputs["input_ids"].shape[1], g.num_layers, g.num_heads, g.head_dim)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_position_is_right_under_padding(padding_side):
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    encoded = _encode(tok, PROMPTS)
    inputs = batch_inputs(encoded, pad_token_id(tok), torch.device("cpu"), padding_side=padding_side)
    with torch.no_grad(), HeadTrace(model, positions="last", attention_mask=inputs["attention_mask"], residual=True) as trace:
        model(**inputs)
        batched, batched_resid = trace.stacked_heads(), trace.stacked_residual()
    for row, ids in enumerate(encoded):
        with torch.no_grad(), HeadTrace(model, positions="last", residual=True) as single:
            model(input_ids=torch.tensor([ids]))
        torch.testing.assert_close(batched[row], single.stacked_heads()[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batched_resid[row], single.stacked_residual()[0], rtol=0, atol=1e-5)


def test_last_token_index_both_paddings():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]
    with pytest.raises(EmptyInputError):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


def test_mask_positions_select_the_masked_tokens():
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    inputs = batch_inputs(_encode(tok, PROMPTS), pad_token_id(tok), torch.device("cpu"))
    mask = inputs["attention_mask"].bool().clone()
    mask[:, 0] = False
    with torch.no_grad(), HeadTrace(model, positions="all") as trace:
        model(**inputs)
        everything = trace.stacked_heads()
        trace.set_positions(mask)
        model(**inputs)
        selected = trace.stacked_heads()
    assert selected.shape[0] == int(mask.sum())
    torch.testing.assert_close(selected, everything[mask])


def test_residual_equals_hidden_states_of_the_model():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    inputs = batch_inputs(_encode(tok, PROMPTS[:1]), pad_token_id(tok), torch.device("cpu"))
    with torch.no_grad(), HeadTrace(model, positions="all", residual=True) as trace:
        out = model(**inputs, output_hidden_states=True)
    # hidden_states[i + 1] is the output of block i (the last one is after the final norm, so skip it)
    for layer in range(model.config.num_hidden_layers - 1):
        torch.testing.assert_close(trace.residual[layer], out.hidden_states[layer + 1])


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_after_an_exception():
    model = make_tiny_model("gpt2")
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with HeadTrace(model, residual=True):
            assert _hook_count(model) == before + 2 * 3
            raise RuntimeError("boom")
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with module_hooks(model, pre={"transformer.h.0.attn.c_proj": lambda m, a: None}):
            raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_bad_paths_layers_and_positions_are_refused():
    model = make_tiny_model("llama")
    before = _hook_count(model)
    with pytest.raises(KeyError, match="no module at path"):
        with module_hooks(model, pre={"model.layers.0.self_attn.o_proj": lambda m, a: None, "model.nope": lambda m, a: None}):
            pass
    assert _hook_count(model) == before
    with pytest.raises(HeadIndexError):
        HeadTrace(model, layers=[0, 3])
    with pytest.raises(ValueError, match="positions"):
        HeadTrace(model, positions="first")


def test_layer_subset_and_missing_capture():
    model, tok = make_tiny_model("mistral"), tiny_tokenizer()
    inputs = batch_inputs(_encode(tok, PROMPTS), pad_token_id(tok), torch.device("cpu"))
    with torch.no_grad(), HeadTrace(model, layers=[2, 0], attention_mask=inputs["attention_mask"]) as trace:
        with pytest.raises(RuntimeError, match="run a forward pass"):
            trace.stacked_heads()
        model(**inputs)
    assert sorted(trace.heads) == [0, 2]
    assert trace.stacked_heads().shape == (2, 2, 4, 8)
