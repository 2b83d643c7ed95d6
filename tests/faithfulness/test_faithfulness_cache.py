"""GenerationCache: round trips, key separation, reopening, two writer processes, bad files, atomic batches."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from iti.errors import ItiError
from iti.faithfulness.cache import SCHEMA_VERSION, CachedGeneration, CacheFileError, GenerationCache, GenerationKey

SETTINGS = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "max_new_tokens": 64, "seed": 0}


def make_key(prompt: str = "Q: Where did fortune cookies originate?\nA:", *, model: str = "smollm2-135m",
             intervention: str = "", **settings: object) -> GenerationKey:
    return GenerationKey(model, intervention, prompt, {**SETTINGS, **settings})


def ok(text: str, duration: float = 0.5) -> CachedGeneration:
    return CachedGeneration(response=text, error=None, duration=duration)


def test_round_trip_of_success_and_error(tmp_path):
    good, bad = make_key("a"), make_key("b" * 10)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put(good, ok("The origin is unclear.", 1.25))
        cache.put(bad, CachedGeneration(None, "PromptTooLong: 9000 tokens > 8192", 0.01))
        got_good, got_bad = cache.get(good), cache.get(bad)
    assert got_good == CachedGeneration("The origin is unclear.", None, 1.25) and got_good.ok
    assert got_bad == CachedGeneration(None, "PromptTooLong: 9000 tokens > 8192", 0.01) and not got_bad.ok


def test_get_of_missing_key_is_none(tmp_path):
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put(make_key("present"), ok("x"))
        assert cache.get(make_key("absent")) is None
        assert cache.get_many([make_key("absent")]) == [None]


def test_put_replaces_an_entry(tmp_path):
    """A retried failure overwrites the cached error instead of adding a second row."""
    key = make_key()
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put(key, CachedGeneration(None, "TimeoutError: server did not answer", 30.0))
        cache.put(key, ok("answer"))
        assert cache.get(key) == ok("answer")
        assert cache.stats() == {"entries": 1, "errors": 0}


def test_get_many_keeps_order_and_chunks_over_500_keys(tmp_path):
    stored = [make_key(f"prompt {i}") for i in range(1203)]
    missing = [make_key(f"missing {i}") for i in range(5)]
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([(k, ok(f"response {i}", i / 10)) for i, k in enumerate(stored)])
        wanted = stored + missing + stored[:3]  # duplicates are answered too
        random.Random(0).shuffle(wanted)
        expected = {k: ok(f"response {i}", i / 10) for i, k in enumerate(stored)}
        selects: list[str] = []
        cache._conn.set_trace_callback(lambda sql: selects.append(sql) if sql.startswith("SELECT") else None)
        got = cache.get_many(wanted)
        cache._conn.set_trace_callback(None)
    assert got == [expected.get(k) for k in wanted]
    assert sum(g is None for g in got) == 5
    assert len(selects) == 3  # 1208 distinct keys -> chunks of 500, 500, 208


def test_keys_differing_in_any_field_do_not_collide(tmp_path):
    base = make_key()
    variants = {
        "base": base,
        "intervened": make_key(intervention="sha256:3f2a9c"),
        "other intervention": make_key(intervention="sha256:77b0e1"),
        "model": make_key(model="baked:3f2a9c"),
        "max_new_tokens": make_key(max_new_tokens=65),
        "seed": make_key(seed=1),
        "new setting": GenerationKey(base.model, base.intervention, base.prompt, {**SETTINGS, "min_p": 0.05}),
        "prompt": make_key(base.prompt + " "),
    }
    assert len({k.digest() for k in variants.values()}) == len(variants)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([(k, ok(name)) for name, k in variants.items()])
        assert len(cache) == len(variants)
        for name, key in variants.items():
            assert cache.get(key) == ok(name), name


def test_none_and_empty_intervention_both_mean_the_plain_model():
    assert make_key(intervention="none") == make_key(intervention="")
    assert make_key(intervention="none").intervention == ""
    assert make_key(intervention="none") != make_key(intervention="sha256:3f2a9c")


def test_settings_order_does_not_matter(tmp_path):
    forward = GenerationKey("m", "", "p", {"temperature": 0.7, "seed": 3, "top_p": 0.9})
    backward = GenerationKey("m", "", "p", {"top_p": 0.9, "seed": 3, "temperature": 0.7})
    assert forward.digest() == backward.digest()
    assert forward == backward and hash(forward) == hash(backward) and len({forward, backward}) == 1
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put(forward, ok("same"))
        assert cache.get(backward) == ok("same")
        assert len(cache) == 1


def test_digest_is_sha256_of_canonical_json():
    key = GenerationKey("smollm2-135m", "sha256:ab", "Frage: Grüße? 你好", {"seed": 1, "max_new_tokens": 8})
    canonical = json.dumps({"model": "smollm2-135m", "intervention": "sha256:ab", "prompt": "Frage: Grüße? 你好",
                            "settings": {"max_new_tokens": 8, "seed": 1}},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert key.digest() == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_key_is_immutable_and_picklable():
    settings = {"seed": 0}
    key = GenerationKey("m", "", "p", settings)
    before = key.digest()
    settings["seed"] = 1  # the caller's dict is copied, not aliased
    assert key.settings["seed"] == 0 and key.digest() == before
    with pytest.raises(TypeError):
        key.settings["seed"] = 2  # type: ignore[index]
    clone = pickle.loads(pickle.dumps(key))
    assert clone == key and clone.digest() == before and dict(clone.settings) == {"seed": 0}


def test_key_rejects_settings_that_are_not_json():
    with pytest.raises(TypeError, match="JSON"):
        GenerationKey("m", "", "p", {"dtype": object()})
    with pytest.raises(TypeError, match="JSON"):
        GenerationKey("m", "", "p", {"temperature": float("nan")})
    with pytest.raises(TypeError, match="keys must be str"):
        GenerationKey("m", "", "p", {1: "x"})  # type: ignore[dict-item]


def test_invalid_generations_are_rejected():
    with pytest.raises(ValueError, match="exactly one"):
        CachedGeneration(None, None, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        CachedGeneration("text", "Error: x", 1.0)
    with pytest.raises(ValueError, match="duration"):
        CachedGeneration("text", None, -1.0)


def test_reopening_sees_the_data_len_and_stats(tmp_path):
    path = tmp_path / "nested" / "dir" / "c.sqlite"  # parent directories are created
    with GenerationCache(path) as cache:
        assert len(cache) == 0 and cache.stats() == {"entries": 0, "errors": 0}
        assert cache  # an empty cache is still truthy, so `if cache:` means "have a cache"
        cache.put_many([(make_key(f"p{i}"), ok(f"r{i}")) for i in range(7)])
        cache.put(make_key("too long"), CachedGeneration(None, "PromptTooLong: 9000 tokens > 8192", 0.0))
    with GenerationCache(path) as again:
        assert len(again) == 8
        assert again.stats() == {"entries": 8, "errors": 1}
        assert again.get(make_key("p3")) == ok("r3")
    # The file is WAL-mode SQLite with readable columns and the schema version.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        row = raw.execute("SELECT model, intervention, prompt, settings, error FROM generations WHERE prompt = 'too long'")
        model, intervention, prompt, settings, error = row.fetchone()
    raw.close()
    assert (model, intervention, prompt) == ("smollm2-135m", "", "too long")
    assert json.loads(settings) == SETTINGS and error.startswith("PromptTooLong")


def test_closed_cache_refuses_work(tmp_path):
    cache = GenerationCache(tmp_path / "c.sqlite")
    cache.close()
    cache.close()
    with pytest.raises(ValueError, match="closed"):
        cache.get(make_key())


def _write_entries(path: str, worker: int, count: int, barrier) -> None:
    """Child process: both children create the file together, then both write together, one entry per put."""
    barrier.wait(timeout=60)
    with GenerationCache(path, timeout=30) as cache:
        barrier.wait(timeout=60)
        for i in range(count):
            cache.put(make_key(f"worker {worker} prompt {i}"), ok(f"worker {worker} response {i}", i / 100))
            time.sleep(0.001)  # let the other writer in, so the two really interleave


def test_two_processes_write_at_the_same_time(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    children = [ctx.Process(target=_write_entries, args=(path, w, 200, barrier)) for w in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        if child.is_alive():
            child.kill()
    assert [c.exitcode for c in children] == [0, 0]
    keys = [make_key(f"worker {w} prompt {i}") for w in range(2) for i in range(200)]
    with GenerationCache(path) as cache:
        assert len(cache) == 400
        assert cache.get_many(keys) == [ok(f"worker {w} response {i}", i / 100) for w in range(2) for i in range(200)]


def test_threads_can_share_one_instance(tmp_path):
    errors: list[BaseException] = []
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        def work(t: int) -> None:
            try:
                for i in range(50):
                    cache.put(make_key(f"t{t} p{i}"), ok(f"t{t} r{i}"))
                    assert cache.get(make_key(f"t{t} p{i}")) == ok(f"t{t} r{i}")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(cache) == 200


def test_corrupt_file_raises_cache_file_error(tmp_path):
    path = tmp_path / "corrupt.sqlite"
    junk = b"not sqlite" + os.urandom(4086)
    path.write_bytes(junk)
    with pytest.raises(CacheFileError, match="not a readable SQLite database") as info:
        GenerationCache(path)
    assert str(path) in str(info.value) and "Delete" in str(info.value)
    assert isinstance(info.value, ItiError)
    assert path.read_bytes() == junk  # the user's file is left alone


def test_other_schema_version_raises_cache_file_error(tmp_path):
    path = tmp_path / "future.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE generations (key TEXT PRIMARY KEY)")
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 98}")
    raw.commit()
    raw.close()
    with pytest.raises(CacheFileError, match=f"version {SCHEMA_VERSION + 98}") as info:
        GenerationCache(path)
    assert str(path) in str(info.value)


def test_whether_an_answer_was_cut_off_is_stored(tmp_path):
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([(make_key("cut"), CachedGeneration("The movie", None, 1.0, True)),
                        (make_key("ended"), CachedGeneration("negative", None, 1.0, False)),
                        (make_key("unknown"), ok("positive"))])
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        assert [g.truncated for g in cache.get_many([make_key(p) for p in ("cut", "ended", "unknown")])] == [True, False, None]
        assert cache.get(make_key("cut")).truncated is True
    with pytest.raises(ValueError, match="truncated"):
        CachedGeneration(None, "PromptTooLong", 0.0, False)
    with pytest.raises(ValueError, match="truncated"):
        CachedGeneration("x", None, 0.0, 1)


def test_a_version_1_file_is_upgraded_in_place_and_its_entries_still_serve(tmp_path):
    path, key = tmp_path / "v1.sqlite", make_key("old prompt")
    raw = sqlite3.connect(path)  # the version-1 layout, as that version wrote it
    raw.execute("CREATE TABLE generations (key TEXT PRIMARY KEY, model TEXT NOT NULL, intervention TEXT NOT NULL, "
                "prompt TEXT NOT NULL, settings TEXT NOT NULL, response TEXT, error TEXT, duration REAL NOT NULL, "
                "created REAL NOT NULL) WITHOUT ROWID")
    raw.execute("INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.digest(), key.model, key.intervention, key.prompt, key.settings_json(), "old answer", None, 2.0, 0.0))
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with GenerationCache(path) as cache:
        assert cache.get(key) == CachedGeneration("old answer", None, 2.0, None)  # not known whether it was cut off
        cache.put(make_key("new"), CachedGeneration("new", None, 1.0, True))
        assert cache.get(make_key("new")).truncated is True
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    raw.close()


def test_other_programs_database_raises_cache_file_error(tmp_path):
    path = tmp_path / "someone_elses.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    raw.commit()
    raw.close()
    with pytest.raises(CacheFileError, match="another program") as info:
        GenerationCache(path)
    assert str(path) in str(info.value)


def test_put_many_with_an_invalid_value_stores_nothing(tmp_path):
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        cache.put(make_key("first"), ok("original"))
        broken = ok("will be cleared")
        broken.response = None  # now neither response nor error
        batch = [(make_key("first"), ok("replacement")), (make_key("second"), broken), (make_key("third"), ok("3"))]
        with pytest.raises(ValueError, match="exactly one"):
            cache.put_many(batch)
        assert len(cache) == 1
        assert cache.get(make_key("first")) == ok("original")


def test_put_many_rolls_back_when_a_write_fails_midway(tmp_path):
    path = tmp_path / "c.sqlite"
    with GenerationCache(path) as cache:
        cache.put(make_key("first"), ok("original"))
        raw = sqlite3.connect(path)  # a trigger makes the database itself reject one row of the batch
        raw.execute("CREATE TRIGGER poison BEFORE INSERT ON generations WHEN NEW.prompt = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        raw.commit()
        raw.close()
        batch = [(make_key("first"), ok("replacement")), (make_key("second"), ok("2")),
                 (make_key("poison"), ok("x")), (make_key("fourth"), ok("4"))]
        with pytest.raises(sqlite3.DatabaseError, match="poisoned row"):
            cache.put_many(batch)
        assert len(cache) == 1
        assert cache.get(make_key("first")) == ok("original")
        cache.put(make_key("second"), ok("2"))  # the connection is usable again afterwards
        assert len(cache) == 2


def test_put_many_of_nothing_is_a_no_op(tmp_path):
    with GenerationCache(Path(tmp_path) / "c.sqlite") as cache:
        cache.put_many([])
        assert len(cache) == 0
