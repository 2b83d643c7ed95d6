"""Shared fixtures: tiny random models of every supported architecture, a tiny tokenizer, the real SmolLM2."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Everything tested here runs offline; this also makes hub look-ups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TEXTS = [
    "Q: What happens if you eat watermelon seeds? A: Nothing happens",
    "Q: Where did fortune cookies originate? A: The origin is unclear",
    "Q: Why do veins appear blue? A: Because of how light penetrates skin",
    "the quick brown fox jumps over the lazy dog",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process (no hub), with BOS and a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(arch: str):
    import transformers as tf

    vocab = len(tiny_tokenizer())
    c = _common(vocab)
    if arch == "llama":
        return tf.LlamaConfig(**c, num_key_value_heads=2)
    if arch == "mistral":
        return tf.MistralConfig(**c, num_key_value_heads=2, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**c, num_key_value_heads=2)
    if arch == "gemma":  # head_dim * heads (64) != hidden_size (32), as in real Gemma
        return tf.GemmaConfig(**c, num_key_value_heads=1, head_dim=16)
    if arch == "gemma2":
        return tf.Gemma2Config(**c, num_key_value_heads=2, head_dim=16, sliding_window=16)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**c, num_key_value_heads=1, head_dim=16, sliding_window=16)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_layer=3, n_head=4, n_embd=32, n_positions=512, bos_token_id=1, eos_token_id=2)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(**c)
    falcon = dict(vocab_size=vocab, num_hidden_layers=3, num_attention_heads=4, hidden_size=32, max_position_embeddings=512,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "falcon":  # Falcon-7B's layout: multi-query (one KV head), parallel attention, no biases
        return tf.FalconConfig(**falcon, multi_query=True, new_decoder_architecture=False)
    if arch == "falcon_new":  # Falcon-40B's layout: grouped KV heads, two layer norms
        return tf.FalconConfig(**falcon, new_decoder_architecture=True, num_kv_heads=2)
    raise KeyError(arch)


ARCHS = ["llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "falcon", "falcon_new"]


def make_tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch)
    config._attn_implementation = "eager" if arch.startswith("gemma2") else "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def make_intervention(model, alpha=20.0, heads=((0, 1), (2, 3), (1, 0)), seed=0):
    """A random-direction intervention (unit stds) on three heads of ``model``, made by hand."""
    import numpy as np

    from iti import Intervention, model_layout

    g = model_layout(model).geometry
    d = np.random.default_rng(seed).normal(size=(len(heads), g.head_dim))
    return Intervention(list(heads), d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(len(heads)), alpha, "tiny", g)


def write_tiny_tqa_features(model, root, name):
    """tqa_mc2 (2 rows a question, true then false) and tqa_gen_end_q (1 row a question) of 10 questions of the tiny
    tokenizer's texts, filed under ``name`` as ``iti collect`` files them."""
    import numpy as np

    from iti import write_features
    from iti.features import PromptSet

    n = 10
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(2 * n)]
    mc2 = PromptSet("tqa_mc2", texts, np.arange(2 * n) % 2 == 0, np.arange(2 * n) // 2, "{t}")
    gen = PromptSet("tqa_gen_end_q", texts[::2], np.zeros(n, dtype=int), np.arange(n), "{t}")
    for ps in (mc2, gen):
        write_features(model, tiny_tokenizer(), ps, root, model_name=name, dtype="float32", layer_wise=False, progress=False)


def token_ids(text="the quick brown fox"):
    """One tokenized text of the tiny tokenizer as a [1, seq] tensor."""
    return torch.tensor([tiny_tokenizer()(text)["input_ids"]])


@pytest.fixture(params=ARCHS)
def tiny(request):
    """(arch, model, tokenizer) for each supported architecture."""
    return request.param, make_tiny_model(request.param), tiny_tokenizer()


def pytest_collection_modifyitems(config, items):
    """A test that takes the real model through a fixture is a `real` test, marked or not (the unit tier,
    ``make test-fast``, runs what is neither real nor slow)."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded model (de-quantized once into the iti cache)."""
    from iti import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tqa():
    from iti import load_truthfulqa

    return load_truthfulqa(allow_hub=False)


@contextlib.contextmanager
def serve_openai(respond=None, models: dict[str, str] | None = None):
    """A loopback OpenAI-compatible server, standing in for vLLM or TGI where a test needs to control the answers: ``GET /v1/models`` lists ``models`` (served name -> root; 404 when
    None), ``POST /v1/completions`` answers ``respond(body) -> (status, payload)`` (default: a reply naming the
    prompt's length), where ``status`` None means never answer. Yields the base URL and the bodies received."""
    seen: list[dict] = []
    stop = threading.Event()
    respond = respond or (lambda body: (200, {"choices": [{"text": f" answer {len(body['prompt'])}"}]}))

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if models is None or not self.path.endswith("/models"):
                return self._send(404, {"error": "not found"})
            self._send(200, {"object": "list", "data": [{"id": k, "object": "model", "root": v} for k, v in models.items()]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            status, payload = respond(body)
            if status is None:  # accept, read, never answer
                stop.wait(60)
                return
            self._send(status, payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def write_tqa_features(model, tok, out: Path, max_questions: int, model_name: str = "smollm2-135m") -> Path:
    """tqa_mc2 and tqa_gen_end_q features of the first ``max_questions`` questions, written into ``out``."""
    from iti import build_prompt_set, write_features

    for name in ("tqa_mc2", "tqa_gen_end_q"):
        write_features(model, tok, build_prompt_set(name, max_questions=max_questions), out, model_name=model_name, progress=False)
    return out


def serve_json(respond):
    """:func:`serve_openai` answering every POST with ``respond(body) -> (status, payload)``; no model list."""
    return serve_openai(respond)


def assert_same_effect(model, ids, first, second, atol: float = 1e-4) -> None:
    """Two interventions give the same logits on ``ids`` with the shift at every position (``positions="all"``, what
    baked and exported interventions do)."""
    with torch.no_grad():
        with first.applied(model, positions="all"):
            want = model(ids).logits
        with second.applied(model, positions="all"):
            got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
