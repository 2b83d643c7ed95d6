"""The faithfulness run end to end on tiny random checkpoints and loopback servers: what the generation cache is
keyed by, which server failures stop the run (and are never cached), timeouts, and where each run writes."""
from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from iti import Intervention, model_layout
from iti.faithfulness.cache import GenerationCache
from iti.faithfulness.experiment import FaithfulnessConfig, run_faithfulness

from .conftest import make_tiny_model, tiny_tokenizer


def save_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny random llama with its tokenizer, saved as a local checkpoint directory."""
    make_tiny_model("llama", seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def save_baked(path: Path, made_from: Path, seed: int = 1) -> Path:
    """A stand-in for an edit_weight.py output: other weights plus the iti_intervention/ it was baked from."""
    model = make_tiny_model("llama", seed=seed)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    g = model_layout(model).geometry
    d = np.random.default_rng(0).normal(size=(2, g.head_dim))
    Intervention([(0, 1), (1, 0)], d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(2), 4.0, str(made_from),
                 g).save(path / "iti_intervention")
    return path


@contextlib.contextmanager
def serve_openai(respond=None, models: dict[str, str] | None = None):
    """A loopback OpenAI-compatible server: ``GET /v1/models`` lists ``models`` (served name -> root; 404 when
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


def config(tmp_path: Path, model: Path, **kw) -> FaithfulnessConfig:
    base = dict(model=str(model), datasets=("rte",), tasks=("classify",), max_samples=2, max_new_tokens=4,
                classify_max_new_tokens=4, output_dir=str(tmp_path / "out"), cache=str(tmp_path / "c.sqlite"),
                progress=False)
    return FaithfulnessConfig(**{**base, **kw})


def test_an_overwritten_checkpoint_is_generated_again_not_served_from_the_cache(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", seed=0)
    cfg = config(tmp_path, ckpt)
    first = run_faithfulness(cfg)
    assert first["arms"]["plain"]["generated"] == 2
    assert run_faithfulness(cfg)["arms"]["plain"]["cache_hits"] == 2  # same weights: from the cache
    save_checkpoint(ckpt, seed=1)  # other weights under the same name
    again = run_faithfulness(cfg)
    assert again["arms"]["plain"]["generated"] == 2 and again["arms"]["plain"]["cache_hits"] == 0
    assert again["arms"]["plain"]["model"] != first["arms"]["plain"]["model"]


def test_an_overwritten_baked_checkpoint_is_generated_again(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    baked = save_baked(tmp_path / "baked", ckpt, seed=1)
    cfg = config(tmp_path, ckpt, baked=str(baked))
    assert run_faithfulness(cfg)["arms"]["intervened"]["generated"] == 2
    make_tiny_model("llama", seed=2).save_pretrained(baked)  # re-baked in place, same intervention files
    again = run_faithfulness(cfg)
    assert again["arms"]["intervened"]["generated"] == 2 and again["arms"]["plain"]["cache_hits"] == 2


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    """Checkpoint hashes are remembered under $ITI_CACHE: keep them in the test's directory."""
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "iti-cache"))


def test_remote_arms_are_keyed_by_url_and_what_the_server_serves_not_the_name_alone(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    base = dict(remote_plain_model="smol", remote_intervened_model="smol-iti")
    with serve_openai(models={"smol": "/srv/smollm2", "smol-iti": "/srv/smollm2-iti"}) as (url, seen):
        first = run_faithfulness(config(tmp_path, ckpt, remote_url=url, **base))
    assert first["arms"]["plain"]["model"] == f"remote:{url}|smol|root=/srv/smollm2"
    assert first["arms"]["intervened"]["intervention"] == "unverified remote" and len(seen) == 4
    with serve_openai(models={"smol": "/srv/other-model", "smol-iti": "/srv/smollm2-iti"}) as (url2, seen2):
        second = run_faithfulness(config(tmp_path, ckpt, remote_url=url2, **base))
    assert second["arms"]["plain"]["generated"] == 2 and len(seen2) == 4  # another server: not the first one's answers
    baked = save_baked(tmp_path / "baked", ckpt)
    with serve_openai(models={"smol": "/srv/smollm2", "smol-iti": "/srv/smollm2-iti"}) as (url3, seen3):
        third = run_faithfulness(config(tmp_path, ckpt, remote_url=url3, remote_baked=str(baked), **base))
    assert third["arms"]["intervened"]["intervention"] == "baked:" + Intervention.load(baked / "iti_intervention").fingerprint()
