"""The faithfulness run end to end on tiny random checkpoints and loopback servers: what the generation cache is
keyed by, which server failures stop the run (and are never cached), timeouts, and where each run writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iti import Intervention, model_layout
from iti.faithfulness.cache import GenerationCache
from iti.faithfulness.experiment import FaithfulnessConfig, run_faithfulness

from ..conftest import make_tiny_model, serve_openai, tiny_tokenizer


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


def test_every_setting_that_changes_the_answers_keys_the_cache(tmp_path):
    """The same weights in bfloat16 are not served the float32 answers (the weights' fingerprint is the same in both);
    nor are other stop strings, another length limit or the fixed prompt text."""
    ckpt = save_checkpoint(tmp_path / "ckpt")
    base = dict(datasets=("babi1",), task_config=("c-persona-you",))  # its classify prompt holds "Consideing"
    first = run_faithfulness(config(tmp_path, ckpt, **base))
    assert first["arms"]["plain"]["generated"] == 2 and first["arms"]["plain"]["dtype"] == "float32"
    for i, change in enumerate([{"dtype": "bfloat16"}, {"stop_strings": ("zz",)}, {"classify_max_new_tokens": 3},
                                {"fix_prompt_typos": True}]):
        again = run_faithfulness(config(tmp_path, ckpt, **base, **change, output_dir=str(tmp_path / f"out{i}")))
        assert (again["arms"]["plain"]["generated"], again["arms"]["plain"]["cache_hits"]) == (2, 0), change
    assert again["arms"]["plain"]["dtype"] == "float32"
    bf16 = run_faithfulness(config(tmp_path, ckpt, **base, dtype="bfloat16", output_dir=str(tmp_path / "out0")))
    assert bf16["arms"]["plain"]["cache_hits"] == 2 and bf16["arms"]["plain"]["dtype"] == "bfloat16"
    assert run_faithfulness(config(tmp_path, ckpt, **base))["arms"]["plain"]["cache_hits"] == 2


def test_the_summary_reports_the_answers_that_reached_the_token_limit(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    summary = run_faithfulness(config(tmp_path, ckpt, tasks=("classify", "counterfactual"), chat_format="falcon",
                                      system_message="none"))  # the preamble would not fit the tiny model's context
    out = tmp_path / "out"
    for row in summary["rows"]:
        lines = [json.loads(x) for x in (out / "samples" / f"rte_{row['task']}_plain.jsonl").read_text().splitlines()]
        for step in ("classify", "explain", "reclassify"):
            ran = [d[step] for d in lines if d.get(step) and d[step]["response"] is not None]
            assert row["truncated"]["plain"]["answers"][step] == len(ran)
            assert row["truncated"]["plain"]["truncated"][step] == sum(s["truncated"] is True for s in ran)
            assert row["truncated"]["plain"]["unknown"][step] == 0
    assert summary["rows"][1]["truncated"]["plain"]["answers"]["explain"] >= 1
    g = summary["generation"]
    assert g["stop_strings"] == ["User:", "Falcon:", "</s>"] and g["system_message"] is None
    assert g["max_new_tokens"] == {"classify": 4, "explain": 4} and g["introspect_max_new_tokens"] == 1024
    md = (out / "summary.md").read_text()
    assert "## Answers that reached the token limit" in md and "first answers at the limit (4 tokens)" in md
    assert "- Prompts: introspect's, typos included" in md and "- Stop strings: 'User:', 'Falcon:', '</s>'" in md
    c = summary["rows"][1]["truncated"]["plain"]
    assert (f"| rte | counterfactual | plain | {c['truncated']['classify']}/{c['answers']['classify']} "
            f"| {c['truncated']['explain']}/{c['answers']['explain']} |") in md


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    """Checkpoint hashes are remembered under $ITI_CACHE: keep them in the test's directory."""
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "iti-cache"))


def test_remote_arms_are_keyed_by_url_and_what_the_server_serves_not_the_name_alone(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    baked = save_baked(tmp_path / "baked", ckpt)
    base = dict(remote_plain_model="smol", remote_intervened_model="smol-iti", remote_baked=str(baked))
    with serve_openai(models={"smol": "/srv/smollm2", "smol-iti": "/srv/smollm2-iti"}) as (url, seen):
        first = run_faithfulness(config(tmp_path, ckpt, remote_url=url, **base))
    assert first["arms"]["plain"]["model"] == f"remote:{url}|smol|root=/srv/smollm2"
    assert first["arms"]["intervened"]["intervention"] == "baked:" + Intervention.load(baked / "iti_intervention").fingerprint()
    assert len(seen) == 4
    with serve_openai(models={"smol": "/srv/other-model", "smol-iti": "/srv/smollm2-iti"}) as (url2, seen2):
        second = run_faithfulness(config(tmp_path, ckpt, remote_url=url2, force=True, **base))
    assert second["arms"]["plain"]["generated"] == 2 and len(seen2) == 4  # another server: not the first one's answers
    from iti.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="--remote_baked: required with --remote_intervened_model"):
        run_faithfulness(config(tmp_path, ckpt, remote_url=url2, remote_plain_model="smol", remote_intervened_model="smol-iti"))


def test_a_plugin_steered_arm_asks_one_server_per_request_and_is_keyed_by_the_shift_it_asks_for(tmp_path):
    """--remote_steering: the intervened arm is the plain arm's server with the iti vLLM plugin's vllm_xargs on every
    request; --calibrate_alphas sends each candidate strength to that one server, each keyed apart."""
    ckpt = save_checkpoint(tmp_path / "ckpt")
    inter_dir = save_baked(tmp_path / "baked", ckpt) / "iti_intervention"
    inter = Intervention.load(inter_dir)
    base = dict(remote_plain_model="smol", intervention=str(inter_dir), remote_steering="truthful")
    with serve_openai(models={"smol": "/srv/smollm2"}) as (url, seen):
        first = run_faithfulness(config(tmp_path, ckpt, remote_url=url, alpha=7.0, **base))
        steered = [b["vllm_xargs"] for b in seen if "vllm_xargs" in b]
        assert len(steered) == 2 and len(seen) == 4  # 2 samples per arm, one server
        assert steered == [{"iti": "truthful", "iti_strength": 7.0, "iti_positions": "last"}] * 2
        # the cache identity is the local copy's shift at that alpha, written out here
        assert first["arms"]["intervened"]["intervention"] == \
            f"vllm-plugin:truthful|{inter.with_alpha(7.0).fingerprint()}|positions=last"
        assert first["arms"]["intervened"]["model"] == first["arms"]["plain"]["model"]
        seen.clear()
        cal = run_faithfulness(config(tmp_path, ckpt, remote_url=url, calibrate_alphas=(3.0, 7.0, 12.0), dev_samples=2,
                                      output_dir=str(tmp_path / "cal"), **base))
    strengths = sorted({b["vllm_xargs"]["iti_strength"] for b in seen if "vllm_xargs" in b})
    assert strengths == [3.0, 7.0, 12.0] and {b["model"] for b in seen} == {"smol"}
    assert [t["alpha"] for t in cal["calibration"]["trials"]] == [3.0, 7.0, 12.0]
    # no parse-rate gap on this server's answers: the largest strength is chosen and reported, keyed by its shift
    assert cal["calibration"]["chosen"] == 12.0
    assert cal["arms"]["intervened"]["intervention"] == f"vllm-plugin:truthful|{inter.with_alpha(12.0).fingerprint()}|positions=last"
    from iti.errors import InvalidOptionError

    for bad, match in ((dict(remote_steering="truthful"), "--remote_steering: needs --intervention"),
                       (dict(intervention=str(inter_dir)), "--intervention: with --remote_url only beside --remote_steering"),
                       (dict(remote_steering="truthful", intervention=str(inter_dir), remote_intervened_model="smol",
                             remote_baked=str(tmp_path / "baked")), "not both")):
        with pytest.raises(InvalidOptionError, match=match):
            config(tmp_path, ckpt, remote_url="http://127.0.0.1:9/v1", **bad).validate()
    with pytest.raises(InvalidOptionError, match="--remote_steering: only with --remote_url"):
        config(tmp_path, ckpt, intervention=str(inter_dir), remote_steering="truthful").validate()


def _cached_errors(path: Path) -> int:
    with GenerationCache(path) as cache:
        return cache.stats()["errors"]


VLLM_404 = {"object": "error", "message": "The model `smoll` does not exist.", "type": "NotFoundError", "param": None,
            "code": 404}


@pytest.mark.parametrize("status,payload", [(404, VLLM_404), (200, VLLM_404), (401, {"error": "bad key"}),
                                            (403, {"error": "forbidden"})],
                         ids=["404 wrong name", "200 error body", "401", "403"])
def test_server_errors_stop_the_run_and_are_never_cached(tmp_path, capsys, status, payload):
    from iti.cli import main

    ckpt = save_checkpoint(tmp_path / "ckpt")
    capsys.readouterr()
    argv = ["faithfulness", "--model", str(ckpt), "--dataset", "rte", "--task", "classify", "--max-samples", "2",
            "--classify-max-new-tokens", "4", "--cache", str(tmp_path / "c.sqlite"), "--output_dir", str(tmp_path / "out"),
            "--remote-plain-model", "smoll", "--quiet", "--max-workers", "1"]
    with serve_openai(lambda body: (status, payload)) as (url, seen):
        assert main(argv + ["--remote-url", url]) == 2
    err = capsys.readouterr().err.strip()
    print(err)
    assert err.startswith("iti: error:") and len(err.splitlines()) == 1 and url in err and len(seen) == 1
    assert _cached_errors(tmp_path / "c.sqlite") == 0
    with serve_openai() as (url, seen):  # the right server: everything is generated, nothing comes from the cache
        assert main(argv + ["--remote-url", url, "--force"]) == 0  # another URL: another run's settings
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["arms"]["plain"]["generated"] == 2 and summary["rows"][0]["summaries"]["plain"]["error"] == 0


def test_an_over_long_prompt_is_cached_as_its_error_and_retry_errors_regenerates_it(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    context = {"chars": 300}
    too_long = lambda body: ((400, {"object": "error", "message": "prompt is too long", "code": 400})  # noqa: E731
                             if len(body["prompt"]) > context["chars"] else (200, {"choices": [{"text": " positive"}]}))
    with serve_openai(too_long) as (url, seen):
        cfg = lambda **kw: config(tmp_path, ckpt, remote_url=url, remote_plain_model="smol", **kw)  # noqa: E731
        first = run_faithfulness(cfg())
        errors = _cached_errors(tmp_path / "c.sqlite")
        assert errors >= 1 and first["rows"][0]["summaries"]["plain"]["error"] == errors
        again = run_faithfulness(cfg())
        assert again["arms"]["plain"]["generated"] == 0  # the prompt's own error is reused
        retried = run_faithfulness(cfg(retry_errors=True))  # still too long: generated again, still an error
        assert retried["arms"]["plain"]["generated"] == errors and retried["arms"]["plain"]["cache_hits"] == 2 - errors
        context["chars"] = 10**6  # the server restarted with a longer context
        fixed = run_faithfulness(cfg(retry_errors=True))
    assert fixed["arms"]["plain"]["generated"] == errors
    assert fixed["rows"][0]["summaries"]["plain"]["error"] == 0 and _cached_errors(tmp_path / "c.sqlite") == 0


def test_a_server_that_stops_answering_fails_fast_and_keeps_the_answers_before(tmp_path):
    import time

    from iti.errors import ItiError

    ckpt = save_checkpoint(tmp_path / "ckpt")
    answered = []

    def respond(body):  # two answers, then the server accepts every request and never answers
        if len(answered) >= 2:
            return None, None
        answered.append(body["prompt"])
        return 200, {"choices": [{"text": " positive"}]}

    with serve_openai(respond) as (url, seen):
        t = time.perf_counter()
        with pytest.raises(ItiError) as e:
            run_faithfulness(config(tmp_path, ckpt, remote_url=url, remote_plain_model="smol", max_samples=4,
                                    remote_timeout=0.5))
        took = time.perf_counter() - t
    message = str(e.value)
    assert took < 8 and len(message.splitlines()) == 1 and url in message and "--remote_timeout" in message
    with GenerationCache(tmp_path / "c.sqlite") as cache:  # the two finished answers are kept
        assert cache.stats() == {"entries": 2, "errors": 0}


def test_each_run_writes_to_its_own_directory_and_another_runs_directory_is_refused(tmp_path, monkeypatch):
    from iti.errors import OutputExistsError
    from iti.faithfulness import experiment

    monkeypatch.setattr(experiment, "RESULTS_DIR", tmp_path / "results")
    ckpt = save_checkpoint(tmp_path / "ckpt")
    run_faithfulness(config(tmp_path, ckpt, output_dir=None))
    run_faithfulness(config(tmp_path, ckpt, output_dir=None, max_samples=3))
    run_faithfulness(config(tmp_path, ckpt, output_dir=None))  # the same settings again: the same directory
    dirs = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(dirs) == 2 and all(d.startswith("ckpt_plain_rte_classify_") for d in dirs)
    for d in dirs:
        assert len(list((tmp_path / "results" / d / "samples").iterdir())) == 1
    run_faithfulness(config(tmp_path, ckpt))  # an explicit directory
    with pytest.raises(OutputExistsError, match=r"max_samples 2 -> 3.*--force") as e:
        run_faithfulness(config(tmp_path, ckpt, max_samples=3))
    assert len(str(e.value).splitlines()) == 1
    forced = run_faithfulness(config(tmp_path, ckpt, max_samples=3, force=True))
    assert forced["config"]["max_samples"] == 3


def test_dry_plans_the_prompts_a_run_sends_and_writes_nothing(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    baked = save_baked(tmp_path / "baked", ckpt)
    kw = dict(datasets=("rte", "imdb"), tasks=("classify", "redacted"), max_samples=3, baked=str(baked))
    plan = run_faithfulness(config(tmp_path, ckpt, dry=True, **kw))
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.sqlite").exists()
    assert [(p["dataset"], p["task"], p["prompts"]) for p in plan["plan"]] == [
        ("rte", "classify", 3), ("rte", "redacted", 6), ("imdb", "classify", 3), ("imdb", "redacted", 6)]
    summary = run_faithfulness(config(tmp_path, ckpt, **kw))
    sent = sum(arm["generated"] + arm["cache_hits"] for arm in summary["arms"].values())
    # the classify prompts of the redacted task are the classify task's (served from the cache); every known prompt
    # is asked, and the follow-ups at most as often as the plan says
    assert plan["prompts"] <= sent <= plan["prompts"] + plan["follow_up_prompts_at_most"]


def test_clean_cache_drops_exactly_this_runs_rows_and_they_are_generated_again(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt")
    other = run_faithfulness(config(tmp_path, ckpt, datasets=("imdb",), output_dir=str(tmp_path / "other")))
    cfg = config(tmp_path, ckpt, tasks=("classify", "counterfactual"), max_samples=3)
    first = run_faithfulness(cfg)
    made = first["arms"]["plain"]["generated"]
    cache = GenerationCache(tmp_path / "c.sqlite")
    before = len(cache)
    cache.close()
    assert before == made + other["arms"]["plain"]["generated"]  # every prompt of both runs, once
    again = run_faithfulness(config(tmp_path, ckpt, tasks=("classify", "counterfactual"), max_samples=3, clean_cache=True))
    assert again["arms"]["plain"]["generated"] == made and again["arms"]["plain"]["cache_hits"] == first["arms"]["plain"]["cache_hits"]
    assert run_faithfulness(config(tmp_path, ckpt, datasets=("imdb",), output_dir=str(tmp_path / "other")))["arms"]["plain"]["cache_hits"] \
        == other["arms"]["plain"]["generated"]  # the other run's rows stayed


def _rows_and_samples(out: Path) -> tuple[list, dict[str, str]]:
    summary = json.loads((out / "summary.json").read_text())
    return summary["rows"], {p.name: p.read_text() for p in sorted((out / "samples").glob("*.jsonl"))}


def test_a_finished_run_replays_from_the_cache_with_no_model_and_no_server(tmp_path, capsys):
    """introspect's Offline client: the same rows and samples, the weights gone and the server stopped; a missing
    answer is refused in one line."""
    from iti.cli import main

    ckpt = save_checkpoint(tmp_path / "ckpt")
    baked = save_baked(tmp_path / "baked", ckpt)
    local = config(tmp_path, ckpt, baked=str(baked), tasks=("classify", "answerable"))
    run_faithfulness(local)
    want = _rows_and_samples(tmp_path / "out")
    for weights in (*ckpt.glob("*.safetensors"), *baked.glob("*.safetensors")):
        weights.unlink()  # the tokenizer stays: it renders the prompts
    replayed = run_faithfulness(config(tmp_path, ckpt, baked=str(baked), tasks=("classify", "answerable"), replay=True))
    assert _rows_and_samples(tmp_path / "out") == want
    assert all(a["generated"] == 0 for a in replayed["arms"].values())

    # a remote run: the server's identity was recorded when it first answered; replay with the server stopped
    base = dict(remote_plain_model="smol", output_dir=str(tmp_path / "remote"))
    with serve_openai(models={"smol": "/srv/smollm2"}) as (url, seen):
        run_faithfulness(config(tmp_path, ckpt, remote_url=url, **base))
    want = _rows_and_samples(tmp_path / "remote")
    n = len(seen)
    argv = ["faithfulness", "--model", str(ckpt), "--dataset", "rte", "--task", "classify", "--max-samples", "2",
            "--max-new-tokens", "4", "--classify-max-new-tokens", "4", "--cache", str(tmp_path / "c.sqlite"),
            "--output_dir", str(tmp_path / "remote"), "--remote-plain-model", "smol", "--endpoint", url, "--quiet"]
    assert main([*argv, "--client", "Offline"]) == 0  # the server is gone
    assert _rows_and_samples(tmp_path / "remote") == want and len(seen) == n

    # one answer missing from the cache: refused in one line, naming the arm
    import sqlite3

    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        table = next(r[0] for r in db.execute("select name from sqlite_master where type='table'") if r[0] != "meta")
        db.execute(f"delete from {table} where key = (select key from {table} where model like 'remote:%' limit 1)")
    capsys.readouterr()
    assert main([*argv, "--replay"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--replay: 1 answer(s) of the plain arm are not in" in err[0]
    # a directory without a recorded run
    assert main([*argv, "--output_dir", str(tmp_path / "empty"), "--replay"]) == 2
    assert "holds no run that recorded its arms" in capsys.readouterr().err


def test_concurrent_requests_keep_every_answer_that_arrived_and_do_not_change_any(tmp_path):
    """--max_workers: with 4 requests in flight, a fatal answer (401) stops the run, and every answer that arrived
    before or beside it is in the cache; the finished run's samples equal the one-at-a-time run's, byte for byte."""
    import hashlib
    import threading
    import time

    from iti.errors import ItiError

    ckpt = save_checkpoint(tmp_path / "ckpt")
    fail_after = {"n": 5}
    answered: list[str] = []
    lock = threading.Lock()

    def respond(body):
        time.sleep(0.05)  # several requests overlap
        with lock:
            if len(answered) >= fail_after["n"]:
                return 401, {"error": "bad key"}
            key = json.dumps(body["prompt"])
            answered.append(key)
        word = ("positive", "negative", "yes", "no")[hashlib.sha256(key.encode()).digest()[0] % 4]
        return 200, {"choices": [{"text": f" {word}"}]}

    kw = dict(remote_plain_model="smol", datasets=("rte",), tasks=("answerable",), max_samples=12)
    with serve_openai(respond) as (url, seen):
        with pytest.raises(ItiError, match="401"):
            run_faithfulness(config(tmp_path, ckpt, remote_url=url, max_workers=4, **kw))
        with GenerationCache(tmp_path / "c.sqlite") as cache:
            assert len(cache) == len(answered) == 5  # each answer that arrived was stored; the failure was not
        fail_after["n"] = 10**6
        four = run_faithfulness(config(tmp_path, ckpt, remote_url=url, max_workers=4, **kw))
        assert four["arms"]["plain"]["cache_hits"] == 5 and four["arms"]["plain"]["generated"] == 24 - 5
        one = run_faithfulness(config(tmp_path, ckpt, remote_url=url, max_workers=1, cache=str(tmp_path / "one.sqlite"),
                                      output_dir=str(tmp_path / "one"), **kw))
    assert one["arms"]["plain"]["generated"] == 24
    assert _rows_and_samples(tmp_path / "out") == _rows_and_samples(tmp_path / "one")
