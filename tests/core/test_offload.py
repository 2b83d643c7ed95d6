"""A model whose weights accelerate offloaded (meta tensors between passes, brought in for each forward), as
``device_map="auto"`` leaves a model too large for its GPUs: inputs go to the hooks' execution device, collection
and steering work, and baking is refused instead of writing into nothing."""
import copy

import pytest
import torch

from iti import collect_head_activations
from iti.architectures import model_device
from iti.bake import bake
from iti.errors import OffloadedWeightsError

from ..conftest import make_intervention, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids

PROMPTS = ["the quick brown fox", "the lazy dog jumps over"]


def _offloaded(model):
    from accelerate import cpu_offload

    return cpu_offload(copy.deepcopy(model), execution_device="cpu")


def test_an_offloaded_model_collects_and_steers_as_the_loaded_one():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    off = _offloaded(model)
    assert off.get_input_embeddings().weight.device.type == "meta"
    assert model_device(off) == torch.device("cpu")  # the hook's execution device, not meta
    expected = collect_head_activations(model, tok, PROMPTS, progress=False).heads
    torch.testing.assert_close(collect_head_activations(off, tok, PROMPTS, progress=False).heads, expected, rtol=0, atol=1e-6)
    inter = make_intervention(model)
    with torch.no_grad():
        with inter.applied(model, positions="all"):
            want = model(_ids()).logits
        with inter.applied(off, positions="all"):
            got = off(_ids()).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_baking_an_offloaded_model_is_refused_with_what_to_do():
    off = _offloaded(make_tiny_model("llama"))
    with pytest.raises(OffloadedWeightsError, match="offloaded .*meta device.*Load it without offloading"):
        bake(off, make_intervention(off))
    assert not getattr(off.config, "iti_baked", None)  # refused before anything changed
