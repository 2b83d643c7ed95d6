import pytest
import torch

from iti import collect_head_activations, model_layout
from iti.batching import plan_batches
from iti.errors import EmptyInputError

from ..conftest import make_tiny_model, tiny_tokenizer

PROMPTS = [
    "Q: What happens if you eat watermelon seeds? A: Nothing happens",
    "Q: Why? A: light",
    "the quick brown fox jumps over the lazy dog and the fox",
    "dog",
    "Q: Where did fortune cookies originate? A: The origin is unclear",
]


def test_batched_padded_equals_one_at_a_time(tiny):
    arch, model, tok = tiny
    g = model_layout(model).geometry
    batched = collect_head_activations(model, tok, PROMPTS, batch_size=3, residual=True, progress=False)
    single = collect_head_activations(model, tok, PROMPTS, batch_size=1, residual=True, progress=False)
    assert batched.heads.shape == (len(PROMPTS), g.num_layers, g.num_heads, g.head_dim)
    assert batched.residual.shape == (len(PROMPTS), g.num_layers, g.hidden_size)
    torch.testing.assert_close(batched.heads, single.heads, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.residual, single.residual, rtol=0, atol=1e-5)


def test_rows_come_back_in_prompt_order():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    forward = collect_head_activations(model, tok, PROMPTS, batch_size=2, progress=False).heads
    backward = collect_head_activations(model, tok, PROMPTS[::-1], batch_size=2, progress=False).heads
    torch.testing.assert_close(forward, backward.flip(0), rtol=0, atol=1e-5)


def test_all_positions_gives_each_prompt_its_own_length():
    model, tok = make_tiny_model("gpt_neox"), tiny_tokenizer()
    result = collect_head_activations(model, tok, PROMPTS, positions="all", batch_size=2, progress=False)
    last = collect_head_activations(model, tok, PROMPTS, positions="last", batch_size=2, progress=False)
    for i, h in enumerate(result.heads):
        assert h.shape[0] == result.lengths[i] == len(tok(PROMPTS[i])["input_ids"])
        torch.testing.assert_close(h[-1], last.heads[i], rtol=0, atol=1e-5)


def test_plan_batches_longest_first_and_deterministic():
    lengths = [3, 9, 3, 7, 9, 1]
    plan = plan_batches(lengths, 4)
    assert [b.tolist() for b in plan] == [[1, 4, 3, 0], [2, 5]]
    with pytest.raises(ValueError):
        plan_batches(lengths, 0)


def test_empty_and_malformed_prompt_lists_are_refused():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(EmptyInputError, match="empty"):
        collect_head_activations(model, tok, [], progress=False)
    with pytest.raises(TypeError, match="list of strings"):
        collect_head_activations(model, tok, "one prompt", progress=False)
    with pytest.raises(ValueError, match="positions"):
        collect_head_activations(model, tok, PROMPTS, positions="first", progress=False)


def test_prompt_that_tokenizes_to_nothing_is_refused():
    from transformers import PreTrainedTokenizerFast

    model = make_tiny_model("llama")
    tok = tiny_tokenizer()
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()))
    bare.backend_tokenizer.post_processor = None
    with pytest.raises(EmptyInputError, match="prompt 1"):
        collect_head_activations(model, bare, ["dog", ""], progress=False)


def test_prompt_longer_than_the_context_is_refused():
    model, tok = make_tiny_model("gpt2"), tiny_tokenizer()
    with pytest.raises(ValueError, match="prompt 1 has .* tokens, more than the model's context of 512"):
        collect_head_activations(model, tok, ["dog", "dog " * 600], progress=False)
