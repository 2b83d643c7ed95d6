import numpy as np
import pytest
import torch

from iti import model_layout
from iti.errors import FeatureFileError, HeadIndexError
from iti.intervention import GeometryMismatchError, Intervention

from ..conftest import ARCHS, make_intervention, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids


@pytest.mark.parametrize("arch", ARCHS)
def test_last_position_in_generate_cached_equals_uncached(arch):
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    n = ids.shape[1]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        with inter.applied(model, positions="last"):
            cached = model.generate(ids, use_cache=True, **kw)
            uncached = model.generate(ids, use_cache=False, **kw)
        # reference: one forward over the final sequence, shifting the last prompt token and all generated ones
        with inter.applied(model, positions=n - 1):
            ref = model(cached.sequences).logits[:, n - 1 : -1]
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores, 1), torch.stack(uncached.scores, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(cached.scores, 1), ref, rtol=0, atol=1e-5)
    assert not torch.allclose(torch.stack(plain.scores, 1), torch.stack(cached.scores, 1))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_start_index_in_generate_counts_cached_tokens(arch):
    # a start index past the prompt shifts only later generated tokens; a cached step must know how many tokens
    # the cache already holds (transformers 5 passes it as `cache`, older versions as `past_key_values`)
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    start = ids.shape[1] + 2
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        with inter.applied(model, positions=start):
            cached = model.generate(ids, use_cache=True, **kw)
            uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores, 1), torch.stack(uncached.scores, 1), rtol=0, atol=1e-5)
    scores, base = torch.stack(cached.scores, 1), torch.stack(plain.scores, 1)
    # step t predicts from position n - 1 + t: steps 0-2 see only positions before `start`, step 3 on change
    torch.testing.assert_close(scores[:, :3], base[:, :3], rtol=0, atol=1e-5)
    assert not torch.allclose(scores[:, 3:], base[:, 3:])


def test_last_position_of_a_plain_forward_shifts_only_the_last_token():
    model = make_tiny_model("llama")
    inter = make_intervention(model)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="last"):
            shifted = model(ids).logits
            again = model(ids).logits  # the same prompt again is a new prompt, not a continuation
    torch.testing.assert_close(shifted[:, :-1], base[:, :-1])
    assert not torch.allclose(shifted[:, -1], base[:, -1])
    torch.testing.assert_close(again, shifted)


def test_start_index_all_and_per_row_positions():
    model = make_tiny_model("qwen2")
    inter = make_intervention(model)
    ids = torch.cat([_ids(), _ids()])
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            every = model(ids).logits
        with inter.applied(model, positions=0):
            from_zero = model(ids).logits
        with inter.applied(model, positions=3):
            from_three = model(ids).logits
        with inter.applied(model, positions=torch.tensor([3, 100])):
            per_row = model(ids).logits
    torch.testing.assert_close(every, from_zero)
    torch.testing.assert_close(from_three[:, :3], base[:, :3])
    assert not torch.allclose(from_three[:, 3:], base[:, 3:])
    torch.testing.assert_close(per_row[0], from_three[0])
    torch.testing.assert_close(per_row[1], base[1])
    with pytest.raises(ValueError, match="start indices"):
        with inter.applied(model, positions=torch.tensor([1, 2, 3])):
            model(ids)


def test_positions_of_any_integer_type_and_sequences_are_starts_and_the_rest_is_refused():
    """A numpy int or a 0-d tensor is a start index, a list / tuple / numpy array per-row starts: each gives exactly
    what the plain int or the tensor gives, which a masked shift written out here reproduces. A negative start, a
    float, a bool, a 2-d array or another string is refused before any forward (a negative start used to shift every
    position, the others to be read as "last")."""
    from iti.errors import InvalidOptionError

    model = make_tiny_model("llama")
    inter = make_intervention(model)
    ids = torch.cat([_ids(), _ids()])
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions=3):
            from_three = model(ids).logits
        for same in (np.int64(3), np.int32(3), torch.tensor(3)):
            with inter.applied(model, positions=same):
                torch.testing.assert_close(model(ids).logits, from_three, rtol=0, atol=0)
        for per_row in ([3, 100], (3, 100), np.array([3, 100]), np.array([3, 100], dtype=np.int32)):
            with inter.applied(model, positions=per_row):
                got = model(ids).logits
            torch.testing.assert_close(got[0], from_three[0], rtol=0, atol=0)
            torch.testing.assert_close(got[1], base[1], rtol=0, atol=0)
        assert not torch.allclose(from_three[:, 3:], base[:, 3:])
        for bad in (-1, np.int64(-2), [1, -1], 3.0, np.float32(3), True, np.array([[1, 2]]), [1.5, 2.0], [], "every", None):
            with pytest.raises(InvalidOptionError, match="positions"):
                with inter.applied(model, positions=bad):
                    model(ids)


def test_zero_alpha_changes_nothing_and_hooks_go_away():
    model = make_tiny_model("gemma")
    inter = make_intervention(model, alpha=0.0)
    ids = _ids()
    n_hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    with torch.no_grad():
        base = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with inter.applied(model, positions="all"):
                torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
                raise RuntimeError("boom")
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == n_hooks


def test_save_load_round_trip_and_refusals(tmp_path):
    model = make_tiny_model("llama")
    inter = make_intervention(model)
    inter.meta["method"] = "mass_mean"
    inter.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv", model)
    assert back.heads == inter.heads and back.alpha == inter.alpha and back.meta == inter.meta
    assert np.array_equal(back.directions, inter.directions) and back.fingerprint() == inter.fingerprint()
    with pytest.raises(GeometryMismatchError, match="made for tiny"):
        Intervention.load(tmp_path / "iv", make_tiny_model("gemma"))
    with pytest.raises(GeometryMismatchError):
        with inter.applied(make_tiny_model("gpt2")):
            pass
    tensors = tmp_path / "iv" / "intervention.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[:-8])
    with pytest.raises(FeatureFileError, match="intervention.safetensors is truncated"):
        Intervention.load(tmp_path / "iv")
    tensors.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(FeatureFileError, match="corrupt"):
        Intervention.load(tmp_path / "iv")
    with pytest.raises(FeatureFileError, match="does not exist"):
        Intervention.load(tmp_path / "nothing")


def test_invalid_interventions_are_refused():
    model = make_tiny_model("llama")
    with pytest.raises(HeadIndexError):
        make_intervention(model, heads=((3, 0),))
    with pytest.raises(HeadIndexError):
        make_intervention(model, heads=((0, -1),))
    with pytest.raises(HeadIndexError, match="twice"):
        make_intervention(model, heads=((0, 1), (0, 1)))
    for alpha in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="alpha"):
            make_intervention(model, alpha=alpha)
    g = model_layout(model).geometry
    with pytest.raises(ValueError, match="directions must be"):
        Intervention([(0, 0)], np.ones((1, g.head_dim + 1)), np.ones(1), 1.0, "tiny", g)
    with pytest.raises(ValueError, match="positions"):
        with make_intervention(model).applied(model, positions="first"):
            pass


def _loaded_tiny(tmp_path, arch="llama"):
    """A tiny model and tokenizer as `load_model` returns them (saved to a local directory, then loaded)."""
    from iti import load_model

    make_tiny_model(arch).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return load_model(str(tmp_path))


BATCH_PROMPTS = ["the lazy dog", "Q: Why do veins appear blue? A: Because"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon", "falcon_new"])
def test_batched_steered_generation_equals_one_prompt_at_a_time(tmp_path, arch):
    model, tok = _loaded_tiny(tmp_path, arch)
    inter = make_intervention(model, alpha=1.0)  # small enough that the steered text still depends on the prompt
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad(), inter.applied(model, positions="last"):
        batch = tok(BATCH_PROMPTS, padding=True, return_tensors="pt")
        out = model.generate(**batch, **kw)[:, batch["input_ids"].shape[1]:]
        for row, prompt in enumerate(BATCH_PROMPTS):
            one = tok(prompt, return_tensors="pt")
            single = model.generate(**one, **kw)[0, one["input_ids"].shape[1]:]
            assert out[row].tolist() == single.tolist(), f"row {row} ({prompt!r}) differs between batched and single"
    assert tok.padding_side == "left"


def test_right_padded_batch_is_refused_when_steering_the_last_position():
    from iti.errors import ItiError, PaddingError

    model = make_tiny_model("llama")
    tok = tiny_tokenizer()
    tok.padding_side = "right"
    try:
        batch = tok(BATCH_PROMPTS, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"  # the cached tokenizer's default
    assert batch["attention_mask"][0, -1] == 0  # row 0 is right-padded
    inter = make_intervention(model)
    with torch.no_grad(), inter.applied(model, positions="last"):
        with pytest.raises(PaddingError) as err:
            model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert isinstance(err.value, ItiError) and "[0]" in str(err.value) and "padding_side" in str(err.value)
        # a full (unpadded) batch and left padding are fine
        model(**tok(BATCH_PROMPTS[:1], return_tensors="pt"))
    # other positions are not affected by the check
    with torch.no_grad(), inter.applied(model, positions="all"):
        model(**batch)
