"""TruthfulQA answers from a server: what each request carries (the in-process token ids, greedy, the stop at the
next question, the plugin's steering arguments) and honest_llama's post-processing of what comes back. The answers of
a real plugin server against iti in process are `make serve-check`'s (benchmarks/bench_vllm_plugin.py)."""
from __future__ import annotations

import pytest

from iti.errors import EndpointError
from iti.openai_client import plugin_steering_args
from iti.truthfulqa.prompts import generation_prompt
from iti.truthfulqa.remote_generation import remote_answers

from ..conftest import serve_openai, tiny_tokenizer


def test_each_question_is_sent_as_its_token_ids_with_the_steering_and_the_answer_post_processed():
    tok = tiny_tokenizer()
    prompts = [generation_prompt(q) for q in ("What is up?", "Where do fish sleep?", "Who wrote it?")]
    replies = {0: " Fish sleep.\n", 1: " A: The sky is up.", 2: "  Nobody.  "}

    def respond(body):  # the reply depends on the prompt, so a mixed-up order would show
        return 200, {"choices": [{"text": replies[len(body["prompt"]) % 3]}]}

    with serve_openai(respond) as (url, seen):
        got = remote_answers(url, "smol", tok, prompts, steering=plugin_steering_args("truthful", 12.5), max_new_tokens=7,
                             max_workers=3, progress=False)
    ids = [list(tok(p)["input_ids"]) for p in prompts]  # what generate_answers feeds the model
    want_raw = [replies[len(i) % 3] for i in ids]
    # honest_llama's post-processing, written out: strip, cut at "Q:", keep what follows "A:", strip
    want = [(t.strip().split("Q:")[0].split("A:")[1] if "A:" in t else t.strip().split("Q:")[0]).strip() for t in want_raw]
    assert got == want
    assert sorted(b["prompt"] for b in seen) == sorted(ids)
    for body in seen:
        assert body["model"] == "smol" and body["max_tokens"] == 7 and body["temperature"] == 0 and body["stop"] == ["Q:"]
        assert body["vllm_xargs"] == {"iti": "truthful", "iti_strength": 12.5, "iti_positions": "last"}
    with serve_openai() as (url, seen):
        remote_answers(url, "smol", tok, prompts[:1], progress=False)
    assert "vllm_xargs" not in seen[0]  # no steering: the plain served model


def test_a_server_error_is_raised_not_returned_as_an_answer():
    with serve_openai(lambda body: (400, {"object": "error", "message": "unknown steering 'nope'"})) as (url, _):
        with pytest.raises(EndpointError, match="unknown steering"):
            remote_answers(url, "smol", tiny_tokenizer(), ["Q: x"], steering=plugin_steering_args("nope", 1.0),
                           progress=False)
    with pytest.raises(ValueError, match="positions"):
        plugin_steering_args("truthful", 1.0, "first")
